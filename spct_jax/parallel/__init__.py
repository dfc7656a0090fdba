"""Scale-out: the (data, fsdp, tensor) mesh and multi-host runtime, partition rules, and the memory planner."""
from spct_jax.parallel.mesh import (AXES, BATCH_AXES, Accelerator, DistributedSetup, HostFeed, MeshConfig,
                                    MeshError, batch_axes, batch_shards, batch_sharding, host_local_to_global,
                                    initialize_distributed, make_mesh, parse_accelerator, resolve_distributed)
from spct_jax.parallel.rules import (DECODER_RULES, DEFAULT_RULES, SCALAR_HEAD_RULES, ShardingRuleError,
                                     activation_spec, constrain, kv_cache_shardings, match_partition_rules,
                                     opt_state_shardings, opt_state_specs, param_shardings, param_specs,
                                     unmatched_paths)

__all__ = [
    "AXES", "BATCH_AXES", "Accelerator", "DistributedSetup", "HostFeed", "MeshConfig", "MeshError", "batch_axes",
    "batch_shards", "batch_sharding", "host_local_to_global", "initialize_distributed", "make_mesh",
    "parse_accelerator", "resolve_distributed", "DECODER_RULES", "DEFAULT_RULES", "SCALAR_HEAD_RULES",
    "ShardingRuleError", "activation_spec", "constrain", "kv_cache_shardings", "match_partition_rules",
    "opt_state_shardings", "opt_state_specs", "param_shardings", "param_specs", "unmatched_paths",
]
# The planner (spct_jax.parallel.plan) and `spct plan` (spct_jax.parallel.cli) import the training core; import
# them by module so that `import spct_jax.parallel` stays light.
