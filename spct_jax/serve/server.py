"""`spct serve`: a generative reward model behind HTTP, for RL pipelines (OpenRLHF / verl remote RM).

    spct serve --model DIR [--meta-rm DIR] [--host 127.0.0.1] [--port 8000] [--token-file F] [--k 8]
               [--k-meta 4] [--max-batch 8] [--max-queue 256] [--timeout 120] [--max-new-tokens 512] ...

Safe by default: it binds 127.0.0.1 (expose it on purpose with --host, and then use --token-file); with a token
file every endpoint but /healthz needs `Authorization: Bearer <token>`. On a loopback bind it answers only
requests addressed to a loopback name (Host, and Origin when a browser sends one; --allowed-hosts), and the
scoring endpoints take `Content-Type: application/json` only, so a web page cannot drive it. Endpoints and every
guard's status code: spct_jax/serve/app.py; request/response bodies and the /get_reward pairing and grouping
rules: spct_jax/serve/schema.py.

Bounded work: --max-queue counts ITEMS (GRM prompts) waiting for the scorer, --max-request-items caps one request,
and a request that times out (--timeout) or whose client goes away stops being scored at the next call of
--max-batch items; jobs take turns a call at a time. One call is thus the longest anyone waits behind abandoned
or bigger work: on a loaded 2-core CPU, 8 items of ~6.4K tokens (k=2) took 20-35 s a call, one item 2-4 s, so
serve with --max-batch 1 there (batching buys nothing on CPU either: benchmarks/serve.py).

Bounded connections: at most --max-connections open, each must send its request headers within --header-timeout
seconds (of opening, or of its previous answer) and its body within --body-timeout. A GRM prompt may use the
model's positions less --max-new-tokens; settings under which even the template alone does not fit are refused
at start (exit 2), not answered 400 request after request.

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
import asyncio
import contextlib
import ipaddress
import logging
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
log = logging.getLogger("spct_jax.serve")
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
                   help="items (prompts) per sampler call, the unit in which abandoned work stops; 1 = no batching "
                        "(faster on CPU: benchmarks/serve.py)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="items (GRM prompts) waiting for the scorer before 503; a request never holds more")
    p.add_argument("--max-request-items", type=int, default=128,
                   help="distinct prompts (GRM items) one /get_reward request may hold before 413")
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
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers (from opening, or its last answer)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request has to send its body (408)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections; one more is answered 503 and closed")
    p.add_argument("--allowed-hosts", default=None, metavar="NAME,...",
                   help="Host (and Origin) names answered, e.g. localhost,my-box; '*' = any. Default: on a loopback "
                        "bind 127.0.0.1, localhost, ::1 and the --host value; elsewhere any")
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
    if args.max_request_items < 1 or args.max_connections < 1:
        return "need --max-request-items >= 1 and --max-connections >= 1"
    if args.header_timeout <= 0 or args.body_timeout <= 0 or args.max_body_mb <= 0:
        return "need --header-timeout > 0, --body-timeout > 0 and --max-body-mb > 0"
    if args.max_new_tokens < 1:
        return "need --max-new-tokens >= 1"
    if args.allowed_hosts is not None and not _host_names(args.allowed_hosts):
        return f"--allowed-hosts {args.allowed_hosts!r}: name at least one host, or '*'"
    return None


def _host_names(text: str) -> frozenset[str]:
    return frozenset(h.strip().lower().strip("[]") for h in text.split(",") if h.strip())


def allowed_hosts(args: argparse.Namespace) -> frozenset[str] | None:
    """The Host / Origin names to answer (None = any): --allowed-hosts, else the loopback names on a loopback bind."""
    if args.allowed_hosts is not None:
        names = _host_names(args.allowed_hosts)
        return None if "*" in names else names
    if is_loopback(args.host):
        from spct_jax.serve.app import LOOPBACK_NAMES

        return LOOPBACK_NAMES | {args.host.lower()}
    return None


def load_scorer(args: argparse.Namespace, runtime=None):
    """(GenerativeRewardModel for --model/--meta-rm on the runtime's mesh, in its dtype; its prompt-length check of
    one request item) (grm/judge.py; imports JAX, so kept out of module import). Raises grm.judge.JudgeError naming
    the flag, before any weights load when the settings leave no room for a prompt."""
    from spct_jax.grm.judge import check_template_fits, describe, load_judge, prompt_check

    mesh, dtype = (None, "float32") if runtime is None else (runtime.mesh, runtime.dtype)
    config, tokenizer = describe(args.model)
    # Over-long prompts fail as a 400 for that request instead of overrunning the model's positions.
    budget = check_template_fits(config, tokenizer, template=args.template, max_new_tokens=args.max_new_tokens,
                                 spec=args.model)
    grm = load_judge(args.model, args.meta_rm, mesh=mesh, dtype=dtype, template=args.template,
                     max_prompt_tokens=budget)
    check = prompt_check(grm.tokenizer, template=args.template, budget=budget,
                         positions=config.max_position_embeddings, max_new_tokens=args.max_new_tokens)
    return grm, check


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


_BUSY_BODY = b'{"error": "too many open connections (--max-connections)", "field": null}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
         b"connection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def guarded_protocol(*, header_timeout_s: float, max_connections: int, metrics=None) -> type:
    """uvicorn's h11 protocol with the two guards uvicorn lacks, so slow or many clients cannot pin the server:

      * a header timeout: a connection must complete a request's headers within header_timeout_s of opening, or
        of its previous answer, else it gets 408 and is closed (uvicorn has only a keep-alive timeout, which a
        client defeats by sending one byte of headers now and then; its limit_concurrency answers 503 only once
        headers are complete, so stalled ones would still count);
      * a connection cap: past max_connections open ones, a new connection is answered 503 and closed at once.

    A timer per connection notes the request cycle it was armed in; if no new request has started when it fires,
    the client has not finished a request's headers in time. Pinned to the h11 implementation, whose hooks
    (connection_made, on_response_complete, cycle) it uses and the tests exercise; httptools may be faster, but
    this server's time goes to the model."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _counted = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                if metrics is not None:
                    metrics.connection("refused")
                transport.write(_BUSY)
                transport.close()
                return
            self._counted = True
            if metrics is not None:
                metrics.connections_open(1)
            self._arm()

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(header_timeout_s, self._header_deadline, self.cycle)

        def _header_deadline(self, cycle_then) -> None:
            self._timer = None
            if self.cycle is cycle_then and not self.transport.is_closing():
                if metrics is not None:
                    metrics.connection("header_timeouts")
                log.debug("closed a connection from %s: no complete request headers within %g s (--header-timeout)",
                          self.client, header_timeout_s)
                self.transport.write(_SLOW)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # Idle again (a pipelined request may already have started a new cycle; its answer re-arms instead).
            if not self.transport.is_closing() and self.cycle is not None and self.cycle.response_complete:
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._counted:
                self._counted = False
                if metrics is not None:
                    metrics.connections_open(-1)
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app: Any, **kw: Any):
    """uvicorn.Config for `app`, with the connection guard set from the app's ServeOptions (app.py) when it has
    them, else from ServeOptions' defaults."""
    import uvicorn

    from spct_jax.serve.app import ServeOptions

    state = getattr(app, "state", None)
    options = getattr(state, "serve_options", None)
    http = guarded_protocol(header_timeout_s=getattr(options, "header_timeout_s", ServeOptions.header_timeout_s),
                            max_connections=getattr(options, "max_connections", ServeOptions.max_connections),
                            metrics=getattr(state, "metrics", None))
    return uvicorn.Config(app, http=http, **kw)


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
                    graceful_s: float = 10.0) -> Iterator[tuple[str, Any]]:
    """Run `app` under uvicorn in a background thread (tests, benchmarks, notebooks); yields (base URL, server).

    The socket is bound here, before uvicorn starts, so port 0 gives a free port with no race. Leaving the block
    stops the server the way SIGTERM does (answer in-flight requests, then the app's shutdown drains the batcher).
    The connection guard applies as in `spct serve`.
    """
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, access_log=False,
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

    scorer, prompt_check = load_scorer(args, runtime)
    batcher = Batcher(scorer, max_batch=args.max_batch, max_queue=args.max_queue,
                      batch_wait_s=args.batch_wait_ms / 1e3, max_new_tokens=args.max_new_tokens, seed=args.seed)
    options = ServeOptions(limits=Limits(default_k=args.k, max_k=args.max_k, has_meta_rm=args.meta_rm is not None,
                                         default_k_meta=args.k_meta, max_request_items=args.max_request_items),
                           timeout_s=args.timeout, temperature=args.temperature,
                           fallback_reward=args.fallback_reward, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                           token=token, body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                           max_connections=args.max_connections, allowed_hosts=allowed_hosts(args),
                           prompt_check=prompt_check)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    hosts = "any" if options.allowed_hosts is None else ",".join(sorted(options.allowed_hosts))
    print(f"spct serve: serving on {url} (auth: {'bearer token' if token else 'none'}; hosts: {hosts}): "
          f"model={args.model} meta_rm={args.meta_rm} k={args.k} max_new_tokens={args.max_new_tokens} "
          f"max_batch={args.max_batch} max_queue={args.max_queue} items timeout={args.timeout:g}s "
          f"({runtime.describe()})", file=sys.stderr, flush=True)
    config = uvicorn_config(create_app(batcher, options), host=args.host, port=args.port,
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
