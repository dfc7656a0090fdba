"""`spct serve`: the GRM as a batched, bounded, authenticated reward endpoint for RL pipelines.

Modules, one concept each:
  batcher.py  the micro-batcher: concurrent jobs -> one scorer call on one worker thread (testable without HTTP)
  schema.py   request/response bodies of /v1/score and /get_reward (OpenRLHF), field-naming validation
  metrics.py  counters behind GET /metrics
  app.py      the Starlette app: endpoints, bearer auth, timeouts, back-pressure
  server.py   the command line (`main(argv)`), model loading, uvicorn

Only batcher, schema and metrics are imported here: the app needs the `serve` extra (starlette, uvicorn).
"""
from spct_jax.serve.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull, ScoreParams
from spct_jax.serve.metrics import Metrics
from spct_jax.serve.schema import Limits, SchemaError

__all__ = ["Batcher", "BatcherClosed", "DeadlineExceeded", "Limits", "Metrics", "QueueFull", "SchemaError",
           "ScoreParams"]
