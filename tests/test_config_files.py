"""The run-config loader every command shares (spct_jax/config_files.py): one override syntax, typed overrides,
validation after them, and one argv splitter."""
import os

import pytest

from spct_jax.config_files import ConfigFileError, load_config, split_overrides

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny_cpu.py")


def test_rft_fields_are_defined_and_overridable_in_both_forms():
    base = load_config(TINY)
    assert (base.rft.hinted, base.rft.temperature, base.rft.max_new_tokens, base.rft.general_data) == \
        ("all", 1.0, base.rft.max_new_tokens, "")
    for argv in (["--config.rft.hinted=none"], ["--config.rft.hinted", "none"]):
        overrides, rest = split_overrides(argv + ["--json"])
        assert rest == ["--json"]
        c = load_config(TINY, overrides)
        assert c.rft.hinted == "none"
    c = load_config(TINY, ["--config.rft.temperature", "0.7", "--config.rft.general_data=/data/general.jsonl"])
    assert (c.rft.temperature, c.rft.general_data) == (0.7, "/data/general.jsonl")
    with pytest.raises(ValueError, match="rft.hinted"):  # the config's own validation runs after the overrides
        load_config(TINY, ["--config.rft.hinted=false"])
    with pytest.raises(ConfigFileError, match="bad override"):
        load_config(TINY, ["--config.rft.max_new_tokens=many"])
    with pytest.raises(ConfigFileError, match="names no field 'hint'"):
        load_config(TINY, ["--config.rft.hint=none"])


def test_every_command_splits_argv_with_the_same_function():
    import spct_jax.grm.judge as judge
    import spct_jax.parallel.cli as plan_cli
    import spct_jax.train.stage_common as stage_common

    assert stage_common.split_overrides is split_overrides and plan_cli.split_overrides is split_overrides
    assert not hasattr(judge, "split_overrides")  # it imports the shared one where it parses
    assert split_overrides(["--config.a", "1", "--config.b=2", "--config.c", "--x"]) == (
        ["--config.a=1", "--config.b=2", "--config.c"], ["--x"])
    with pytest.raises(ConfigFileError, match="bad override"):
        load_config(TINY, ["--config.seed"])  # a key without a value
