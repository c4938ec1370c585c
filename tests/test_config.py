import os
import re

import pytest
import yaml

from ppihd.utils.config import ConfigError, load_config, parse_override, save_config
from ppihd.utils.registry import Registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_config_values():
    cfg = load_config(os.path.join(ROOT, "configs", "swin_b_seq.yaml"))
    assert cfg["Arch"]["backbone"]["variant"] == "base"
    assert cfg["Global"]["iters"] == 80000
    assert cfg["Optimizer"]["lr"]["warmup_steps"] == 300
    assert cfg["Optimizer"]["lr"]["learning_rate"] == pytest.approx(1e-3)
    assert cfg["Data"]["windows"] == [[40, 80], [80, 200], [40, 380]]
    assert cfg["Loss"]["class_weights"] == [1, 1, 1, 1, 1, 2]


def test_base_inheritance_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("Global:\n  iters: 100\n  seed: 7\nArch:\n  deep_supervision: true\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nGlobal:\n  iters: 5\n")
    cfg = load_config(str(child), ["Arch.deep_supervision=false", "Data.windows=[[1, 2], [3, 4], [5, 6]]"])
    assert cfg["Global"]["iters"] == 5          # child wins
    assert cfg["Global"]["seed"] == 7           # inherited
    assert cfg["Arch"]["deep_supervision"] is False
    assert cfg["Data"]["windows"] == [[1, 2], [3, 4], [5, 6]]
    assert cfg["Global"]["device"] == "cpu"     # schema default


def test_unknown_keys_name_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"Global\.iter'.*Global\.iters"):
        load_config(None, ["Global.iter=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("Arch:\n  backbone:\n    post_nrom: true\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*Arch\.backbone\.post_nrom.*Arch\.backbone\.post_norm"):
        load_config(str(bad))


def test_override_values_are_not_evaluated():
    # a Python expression stays a string and then fails the type check instead of running
    assert parse_override("Global.output_dir=__import__('os')") == {"Global": {"output_dir": "__import__('os')"}}
    with pytest.raises(ConfigError, match=r"^override -o Global\.iters=__import__\('os'\)\.getpid\(\): 'Global\.iters' "
                                          r"expects int \(default 80000\), "
                                          r"got str \"__import__\('os'\)\.getpid\(\)\"$"):
        load_config(None, ["Global.iters=__import__('os').getpid()"])
    with pytest.raises(ConfigError, match=r"^override 'Global\.iters' must look like Section\.key=value$"):
        parse_override("Global.iters")


def test_circular_base(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    with pytest.raises(ConfigError, match=rf"^circular _base_ chain: {re.escape(a)} -> {re.escape(b)} -> "
                                          rf"{re.escape(a)}$"):
        load_config(a)


def test_save_config_roundtrip(tmp_path):
    cfg = load_config(None, ["Global.iters=12"])
    p = save_config(cfg, str(tmp_path / "out" / "config.yaml"))
    with open(p) as f:
        assert yaml.safe_load(f)["Global"]["iters"] == 12


def test_registry():
    reg = Registry("widget")

    @reg.register
    class Foo:
        def __init__(self, a=1):
            self.a = a

    assert reg.build({"name": "Foo", "a": 3}).a == 3
    with pytest.raises(KeyError, match="known widgets: Foo"):
        reg.build({"name": "Bar"})


# ------------------------------------------------------------------ keys whose default is null (issue 17)
def _null_defaults(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _null_defaults(v, f"{prefix}{k}.")
        elif v is None:
            yield f"{prefix}{k}"


def test_every_null_default_has_a_declared_type():
    from ppihd.utils.schema import DEFAULTS, NULLABLE_TYPES

    assert sorted(_null_defaults(DEFAULTS)) == sorted(NULLABLE_TYPES)


def test_null_default_keys_name_the_key_and_type_on_a_bad_value():
    from ppihd.utils.config import ConfigError, load_config
    from ppihd.utils.schema import NULLABLE_TYPES

    good = {str: "some/path", int: 3, float: 0.5, bool: "true", ("list", int): "[2, 2]",
            ("list", float): "[0.5, 1]"}
    want = {str: "str", int: "int", float: "a number", bool: "bool", ("list", int): "a list of int",
            ("list", float): "a list of float"}
    for key, spec in NULLABLE_TYPES.items():
        bad = "[1, 2]" if spec is str else "abc"
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={bad}"])
        assert f"'{key}' expects {want[spec]} or null" in str(e.value), str(e.value)
        load_config(None, [f"{key}={good[spec]}"])
        load_config(None, [f"{key}=null"])


def test_override_exponent_without_a_dot_is_a_number():
    """PyYAML (YAML 1.1) reads ``1e-3`` as the string "1e-3"; ``-o ...=1e-3`` means the number."""
    from ppihd.utils.config import load_config, parse_override

    assert parse_override("a.b=1e-3") == {"a": {"b": 0.001}}
    assert parse_override("a.b=2E4") == {"a": {"b": 20000.0}} and parse_override("a.b=1.5e-2") == {"a": {"b": 0.015}}
    assert parse_override("a.b=e5") == {"a": {"b": "e5"}} and parse_override("a.b=12") == {"a": {"b": 12}}
    cfg = load_config(None, ["Optimizer.lr.learning_rate=1e-3"])
    assert cfg["Optimizer"]["lr"]["learning_rate"] == 0.001
