"""`spct serve`: a generative reward model behind HTTP, for RL pipelines (OpenRLHF / verl remote RM).

    spct serve --model DIR [--meta-rm DIR] [--host 127.0.0.1] [--port 8000] [--token-file F] [--k 8]
               [--k-meta 4] [--max-batch 8] [--max-queue 256] [--timeout 120] [--max-new-tokens 512] ...

Safe by default: it binds 127.0.0.1 (expose it on purpose with --host, and then use --token-file); with a token
file every endpoint but /healthz needs `Authorization: Bearer <token>`. Endpoints: see spct_jax/serve/app.py;
request/response bodies and the /get_reward pairing and grouping rules: spct_jax/serve/schema.py.

SIGTERM (or Ctrl-C) stops accepting connections, answers the requests in flight, scores what is still queued,
then exits 0. Needs the `serve` extra (starlette, uvicorn).

One host, all its chips: `--mesh data=D,fsdp=F,tensor=T` (and `--dtype`, default bfloat16 with a mesh) shards the
GRM and meta RM over the host's devices, e.g. Gemma-2-27B in bf16 over a v5p-8's 4 chips (`--mesh tensor=4`; `spct
plan` puts GRM + meta RM at 49 GB per chip for one prompt x k=8) or Gemma-2-9B over a v5e-8's 8 (`--mesh
tensor=8`, 10.4 GB per chip; 27B needs 24.5 GB there, more than a v5e chip's 16 GB); `--config FILE` takes the
mesh, dtype, k, k_meta, temperature and max_new_tokens from a run config (grm/judge.py). Several hosts are refused: requests arrive at one process, and the others would
have to join every sampler call with the same inputs, which this server does not do. On a multi-host slice, serve
from one single-host slice per replica and put a load balancer in front.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spct_jax.serve.batcher import Batcher
from spct_jax.serve.schema import Limits

DEFAULT_HOST = "127.0.0.1"
PROG = "spct serve"
DEFAULTS = {"k": 8, "max_new_tokens": 512, "seed": 0}  # when neither a flag nor --config sets them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spct serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder, .gguf file, tiny-random or smollm2-135m")
    p.add_argument("--meta-rm", default=None, help="meta RM folder, scalar or likelihood (enables MetaRM@k)")
    p.add_argument("--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding the bearer token clients must send")
    p.add_argument("--k", type=int, default=None, help="samples per item (Voting@k) unless a request sets k "
                                                       "(default 8)")
    p.add_argument("--k-meta", type=int, default=None, help="samples kept by the meta RM (default k/2)")
    p.add_argument("--max-k", type=int, default=32, help="largest k a request may ask for (at least --k)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="items (prompts) per sampler call; 1 = no batching (faster on CPU: benchmarks/serve.py)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting to be scored before 503")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long an idle worker waits to fill a batch")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request, queueing included, before 504")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.5 for k > 1 (paper), 0 for k = 1")
    p.add_argument("--template", default="default", help="GRM prompt template (spct_jax/grm/prompts.py)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed; equal items get equal judgements "
                                                          "(default 0)")
    p.add_argument("--fallback-reward", type=float, default=0.0,
                   help="/get_reward reward of a response when no sample parsed")
    p.add_argument("--max-body-mb", type=float, default=32.0)
    p.add_argument("--access-log", action="store_true", help="log every request (off: RL loops send many)")
    p.add_argument("--log-level", default="info")
    from spct_jax.grm.judge import add_runtime_args

    add_runtime_args(p)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with --config's fields for the flags not given (grm/judge.py); SystemExit(2) if bad."""
    from spct_jax.grm.judge import parse_args as parse

    return parse(build_parser(), argv, DEFAULTS)


def read_token(path: str) -> str:
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--token-file {path}: needs one token without whitespace")
    if os.name == "posix" and stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        print(f"spct serve: warning: {path} is readable by other users (chmod 600 it)", file=sys.stderr)
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> str | None:
    """An error message for inconsistent flags, else None."""
    if args.k < 1 or args.max_k < args.k:
        return "need 1 <= --k <= --max-k"
    if args.k_meta is not None and args.meta_rm is None:
        return "--k-meta needs --meta-rm"
    if args.k_meta is not None and not 1 <= args.k_meta <= args.k:
        return "need 1 <= --k-meta <= --k"
    if args.max_batch < 1 or args.max_queue < 1 or args.batch_wait_ms < 0 or args.timeout <= 0:
        return "need --max-batch >= 1, --max-queue >= 1, --batch-wait-ms >= 0 and --timeout > 0"
    if args.max_new_tokens < 1:
        return "need --max-new-tokens >= 1"
    return None


def load_scorer(args: argparse.Namespace, runtime=None):
    """The GenerativeRewardModel for --model/--meta-rm on the runtime's mesh, in its dtype (grm/judge.py; imports
    JAX, so kept out of module import). Raises grm.judge.JudgeError naming the flag."""
    from spct_jax.grm.judge import describe, load_judge

    mesh, dtype = (None, "float32") if runtime is None else (runtime.mesh, runtime.dtype)
    config, _ = describe(args.model)
    # Over-long prompts fail as a 400 for that request instead of overrunning the model's positions.
    room = config.max_position_embeddings - args.max_new_tokens
    return load_judge(args.model, args.meta_rm, mesh=mesh, dtype=dtype, template=args.template,
                      max_prompt_tokens=room if room > 0 else None)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
                    graceful_s: float = 10.0) -> Iterator[tuple[str, Any]]:
    """Run `app` under uvicorn in a background thread (tests, benchmarks, notebooks); yields (base URL, server).

    The socket is bound here, before uvicorn starts, so port 0 gives a free port with no race. Leaving the block
    stops the server the way SIGTERM does (answer in-flight requests, then the app's shutdown drains the batcher).
    """
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="spct-serve-http", daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(graceful_s + 10)
        sock.close()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if (err := check_args(args)) is not None:
        print(f"spct serve: {err}", file=sys.stderr)
        return 2
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"spct serve: {e}; install the serve extra: pip install 'spct-jax[serve]'", file=sys.stderr)
        return 2
    token = None
    if args.token_file:
        try:
            token = read_token(args.token_file)
        except (OSError, ValueError) as e:
            print(f"spct serve: {e}", file=sys.stderr)
            return 2
    if token is None and not is_loopback(args.host):
        print(f"spct serve: warning: --host {args.host} without --token-file lets anyone on the network use "
              "this server", file=sys.stderr)
    from spct_jax.grm.judge import JudgeError, setup_runtime

    try:
        runtime = setup_runtime(args.mesh, args.dtype, prog=PROG)
    except JudgeError as e:
        print(f"spct serve: error: {e}", file=sys.stderr)
        return e.exit_code
    if runtime.process_count > 1:
        print(f"spct serve: error: this is process {runtime.process_index} of {runtime.process_count} (a multi-host "
              "run); spct serve runs on one host and shards over that host's devices with --mesh. Serve from a "
              "single-host slice (e.g. v5p-8, v5e-8), one server per slice", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)  # before loading the model, so a taken port fails in seconds, not minutes
    except OSError as e:
        print(f"spct serve: cannot bind {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2

    try:
        return _run(args, sock, token, runtime)
    except JudgeError as e:  # a --model / --meta-rm / --mesh that cannot be used
        print(f"spct serve: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        sock.close()


def _run(args: argparse.Namespace, sock: socket.socket, token: str | None, runtime) -> int:
    import uvicorn

    from spct_jax.serve.app import ServeOptions, create_app

    batcher = Batcher(load_scorer(args, runtime), max_batch=args.max_batch, max_queue=args.max_queue,
                      batch_wait_s=args.batch_wait_ms / 1e3, max_new_tokens=args.max_new_tokens, seed=args.seed)
    options = ServeOptions(limits=Limits(default_k=args.k, max_k=args.max_k, has_meta_rm=args.meta_rm is not None,
                                         default_k_meta=args.k_meta),
                           timeout_s=args.timeout, temperature=args.temperature,
                           fallback_reward=args.fallback_reward, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                           token=token)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"spct serve: serving on {url} (auth: {'bearer token' if token else 'none'}): model={args.model} "
          f"meta_rm={args.meta_rm} k={args.k} max_batch={args.max_batch} max_queue={args.max_queue} "
          f"timeout={args.timeout:g}s ({runtime.describe()})", file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(batcher, options), host=args.host, port=args.port,
                            log_level=args.log_level, access_log=args.access_log,
                            # every in-flight request ends by its own --timeout, so this only bounds a stuck one
                            timeout_graceful_shutdown=args.timeout + 30)
    # uvicorn re-raises the signal it caught once it has shut down gracefully; with the default SIGTERM
    # disposition that would kill us with -15 after a clean drain, so make the re-raise a no-op.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        return 130
    finally:
        batcher.close(drain=False, timeout=5)  # normally already drained by the app's lifespan
    return 0
