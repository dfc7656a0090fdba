"""`spct`: one command line for the whole SPCT pipeline.

    spct demo                         the embedded default: a complete SPCT run on CPU with a tiny model
    spct score --model M --input F    judge items with a GRM (Voting@k, MetaRM@k)
    spct data check PATH              validate preference files
    spct eval score|run ...           benchmark scoring with the official rules
    spct rft|grpo|metarm --config C   the training stages (ml_collections config files, --config.x=y overrides)
    spct export STAGE_DIR             a stage's orbax checkpoint -> an HF folder, offline
    spct plan --config C              per-device memory plan for a mesh
    spct serve --model M              reward server for RL pipelines

Each subcommand lives next to the code it drives; this file only dispatches.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("spct_jax.demo.pipeline", "main", "run the embedded SPCT demo on CPU"),
    "score": ("spct_jax.grm.score_cli", "main", "judge items with a generative reward model"),
    "data": ("spct_jax.data.check", "cli", "data tools: `spct data check PATH [--format F]`"),
    "eval": ("spct_jax.eval.cli", "main", "benchmarks: `spct eval score ...` / `spct eval run ...`"),
    "rft": ("spct_jax.train.rft_cli", "main", "stage 1: rejective fine-tuning"),
    "grpo": ("spct_jax.train.grpo_cli", "main", "stage 2: rule-based online RL (GRPO)"),
    "metarm": ("spct_jax.train.metarm_cli", "main", "train the meta RM"),
    "export": ("spct_jax.train.export_cli", "main", "a stage's checkpoint -> an HF folder: `spct export STAGE_DIR`"),
    "plan": ("spct_jax.parallel.cli", "plan_main", "per-device memory plan for a config"),
    "serve": ("spct_jax.serve.server", "main", "serve a GRM as a reward endpoint"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: spct COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"spct: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
