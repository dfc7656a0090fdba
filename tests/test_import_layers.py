"""The package's imports run one way: every module may import only from layers below its own, and no two modules
import each other, directly or around a circle.

The layers, bottom up (a module belongs to the longest prefix listed; ranks are the order):

  0  paths, config_files, roc     leaf utilities (file system paths, the run-config loader, ROC-AUC)
  1  tokenizers (and tokenizer)   text <-> ids
     parallel, parallel.mesh, parallel.rules, parallel.compilation
                                  leaf sharding helpers: the mesh, partition rules, the compile cache
  2  models                       the networks, their weights, sequence log-probs, input padding
  3  sampling                     (a module or a package: all of it is one layer)
  4  data                         preference items, their formats and batching
  5  grm                          the generative reward model. data and grm sit beside each other above sampling;
                                  grm reads data's item schema, so grm may import data and data never imports grm.
  6  train, eval, serve           the three uses of a GRM; none of them imports another (what two of them share
                                  lives in a lower layer)
     integrations                 RL frameworks' adapters; they call the reward server through serve.client
  7  parallel.plan*, parallel.cli the memory planner reads the training stages' programs, so it sits above train
  8  demo, cli, spct_jax          the demo pipeline and the command line on top

The walk parses sources with `ast` (nothing is imported), so imports inside functions count as much as those at
the top of a module. `if TYPE_CHECKING:` imports count too: a type that must come from above is a layering smell.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = "spct_jax"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYERS: dict[str, tuple[int, str]] = {  # module prefix -> (rank, layer name); the longest matching prefix wins
    "spct_jax.paths": (0, "paths"),
    "spct_jax.config_files": (0, "config_files"),
    "spct_jax.roc": (0, "roc"),
    "spct_jax.tokenizer": (1, "tokenizers"),
    "spct_jax.tokenizers": (1, "tokenizers"),
    "spct_jax.parallel": (1, "parallel.leaf"),  # the package's __init__ re-exports mesh and rules only
    "spct_jax.parallel.mesh": (1, "parallel.leaf"),
    "spct_jax.parallel.rules": (1, "parallel.leaf"),
    "spct_jax.parallel.compilation": (1, "parallel.leaf"),
    "spct_jax.models": (2, "models"),
    "spct_jax.sampling": (3, "sampling"),
    "spct_jax.data": (4, "data"),
    "spct_jax.grm": (5, "grm"),
    "spct_jax.train": (6, "train"),
    "spct_jax.eval": (6, "eval"),
    "spct_jax.serve": (6, "serve"),
    "spct_jax.integrations": (6, "integrations"),
    "spct_jax.parallel.plan": (7, "parallel.planner"),  # also plan_phases, plan_xla (prefix match on the name)
    "spct_jax.parallel.cli": (7, "parallel.planner"),
    "spct_jax.demo": (8, "demo"),
    "spct_jax.cli": (8, "cli"),
    "spct_jax": (8, "spct_jax"),
}
# Imports between two layers of the same rank: none, except these (importer layer, imported layer).
SIDEWAYS = {("integrations", "serve")}  # the adapters are clients of the reward server (serve.client)
# Single edges against the order (importer module, imported module or package), each with the reason it is
# tolerated. None today: the demo's toy task, which reads grm's prompts, lives in spct_jax.demo above grm.
ALLOWED: set[tuple[str, str]] = set()


def layer_of(module: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")
                or (p == "spct_jax.parallel.plan" and module.startswith(p))), key=len)
    return LAYERS[best]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules `source` imports: `import a.b`, `from a import b` (b a module or a name), relative
    imports, at any depth of the tree. Names resolve to the longest known module they start with."""
    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    here = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found = resolve(name)
                if found and found != module:
                    out.add(found)
    return out


def import_graph(root: Path = ROOT, extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the package modules it imports. `extra`: module name -> source, planted beside the real files."""
    sources = {module_name(p, root): (p.read_text(), p.name == "__init__.py") for p in root.rglob("*.py")}
    for name, source in (extra or {}).items():
        sources[name] = (source, False)
    known = set(sources)
    graph = {m: imports_of(src, m, pkg, known) for m, (src, pkg) in sources.items()}
    # `from spct_jax.x import name` also runs spct_jax/x/__init__.py; that edge is the package's, kept above.
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        rank, layer = layer_of(module)
        for dep in deps:
            dep_rank, dep_layer = layer_of(dep)
            if any(module == a and (dep == b or dep.startswith(b + ".")) for a, b in ALLOWED):
                continue
            if dep_rank < rank or dep_layer == layer or (layer, dep_layer) in SIDEWAYS:
                continue
            bad.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    return sorted(bad)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        cycles.append(sorted(comp))
    return cycles


def test_imports_follow_the_layers_and_form_no_cycle():
    graph = import_graph()
    assert len(graph) > 100 and "spct_jax.grm.scorer" in graph  # the walk found the package
    assert layer_violations(graph) == []
    assert import_cycles(graph) == []


def test_the_checker_catches_a_planted_back_import_and_cycle():
    # A models module that reaches up into train (also from inside a function), and two grm modules that import
    # each other: both are reported; the real package alone is clean (the test above).
    planted = {
        "spct_jax.models.planted": textwrap.dedent("""
            import numpy as np
            def f():
                from spct_jax.train.losses import token_logprobs
                return token_logprobs
        """),
        "spct_jax.grm.planted_a": "from spct_jax.grm import planted_b\n",
        "spct_jax.grm.planted_b": "from . import planted_a\n",
        "spct_jax.eval.planted": "from spct_jax.serve.metrics import Metrics\n",  # sideways between peers
    }
    graph = import_graph(extra=planted)
    bad = set(layer_violations(graph)) - set(layer_violations(import_graph()))
    assert "spct_jax.models.planted (models) imports spct_jax.train.losses (train)" in bad
    assert "spct_jax.eval.planted (eval) imports spct_jax.serve.metrics (serve)" in bad
    assert ["spct_jax.grm.planted_a", "spct_jax.grm.planted_b"] in import_cycles(graph)
    assert len(bad) == 2  # the plants add nothing else


def test_importing_the_scorer_loads_no_training_code():
    code = ("import sys, spct_jax.grm.scorer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'orbax' or m.startswith('spct_jax.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
