"""Typed YAML configs: overrides, inheritance, and errors that name the key and the file."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from sld.config import ConfigError, load_config, save_config
from sld.training import OptimConfig


@dataclass
class Data:
    path: str
    limit: int | None = None


@dataclass
class RunConfig:
    data: Data
    optim: OptimConfig = field(default_factory=OptimConfig)
    mode: Literal["fast", "slow"] = "fast"
    tags: list[str] = field(default_factory=list)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "run.yaml", "data:\n  path: a.jsonl\noptim:\n  lr: 1e-3\n")
    cfg = load_config(RunConfig, path, ["optim.lr=2e-4", "mode=slow", "data.limit=5", "tags=[x, y]"])
    assert cfg.data == Data("a.jsonl", 5)
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.optim.warmup_steps == OptimConfig().warmup_steps
    assert cfg.mode == "slow" and cfg.tags == ["x", "y"]


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path, "run.yaml", "data: {path: a}\noptim: {lr: 1e-4}\n")
    assert load_config(RunConfig, path).optim.lr == pytest.approx(1e-4)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "data: {path: a}\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.lrr"):
        load_config(RunConfig, path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "data: {path: a}\noptim: {warmup_steps: lots}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.warmup_steps.*int"):
        load_config(RunConfig, path)


def test_invalid_choice_lists_choices(tmp_path):
    path = write(tmp_path, "bad.yaml", "data: {path: a}\nmode: medium\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'mode'.*'fast', 'slow'"):
        load_config(RunConfig, path)


def test_bad_override_is_blamed_on_the_command_line(tmp_path):
    path = write(tmp_path, "ok.yaml", "data: {path: a}\n")
    with pytest.raises(ConfigError, match=r"command-line override.*optim\.nope"):
        load_config(RunConfig, path, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(RunConfig, path, ["optim.lr"])


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "empty.yaml", "mode: fast\n")
    with pytest.raises(ConfigError, match="missing required key.*data"):
        load_config(RunConfig, path)


def test_base_inheritance_and_round_trip(tmp_path):
    write(tmp_path, "base.yaml", "data: {path: base.jsonl, limit: 3}\noptim: {lr: 0.5}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ndata: {limit: 7}\n")
    cfg = load_config(RunConfig, child)
    assert cfg.data == Data("base.jsonl", 7) and cfg.optim.lr == 0.5
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(RunConfig, saved) == cfg


def test_post_init_validation_is_a_config_error(tmp_path):
    from sld.training import LoopConfig

    @dataclass
    class WithLoop:
        loop: LoopConfig = field(default_factory=LoopConfig)

    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_config(WithLoop, None, ["loop.batch_size=0"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    path = write(tmp_path, "broken.yaml", "data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*not valid YAML"):
        load_config(RunConfig, path)


def test_yaml_boolean_words_map_back_to_literal_choices(tmp_path):
    from sld.training import LoopConfig

    @dataclass
    class WithLoop:
        loop: LoopConfig = field(default_factory=LoopConfig)

    path = write(tmp_path, "run.yaml", "loop: {mixed_precision: no}\n")
    assert load_config(WithLoop, path).loop.mixed_precision == "no"
    assert load_config(WithLoop, None, ["loop.mixed_precision=no"]).loop.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(WithLoop, None, ["loop.mixed_precision=yes"])


@dataclass
class Inner:
    size: int = 1
    name: str = "class default"
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class Outer:
    # a nested default that differs from the nested class's own defaults (as in `sld quickstart`)
    inner: Inner = field(default_factory=lambda: Inner(size=8, name="small", extra={"a": 1}))
    maybe: Inner | None = field(default_factory=lambda: Inner(size=3))


def test_nested_override_updates_the_fields_default_not_the_class_defaults(tmp_path):
    cfg = load_config(Outer, None, ["inner.size=9"])
    assert cfg.inner == Inner(size=9, name="small", extra={"a": 1})
    path = write(tmp_path, "outer.yaml", "inner: {name: file}\nmaybe: {name: m}\n")
    cfg = load_config(Outer, path, ["inner.extra={b: 2}"])
    assert cfg.inner == Inner(size=8, name="file", extra={"b": 2})  # a dict written whole replaces
    # keys set one at a time update the dict of the field's default instance
    assert load_config(Outer, None, ["inner.extra.b=2"]).inner.extra == {"a": 1, "b": 2}
    assert load_config(Outer, path, ["inner.extra.b=2"]).inner.extra == {"a": 1, "b": 2}
    assert cfg.maybe == Inner(size=3, name="m")
    assert load_config(Outer, None, ["maybe=null"]).maybe is None
    assert Outer().inner.size == 8  # the default factory itself is untouched


@dataclass
class WithDefaultDict:
    table: dict[str, int] = field(default_factory=lambda: {"x": 1})


@dataclass
class HoldsDefaultDict:
    plain: WithDefaultDict = field(default_factory=WithDefaultDict)
    custom: WithDefaultDict = field(default_factory=lambda: WithDefaultDict(table={"x": 5, "y": 6}))


def test_a_class_default_dict_is_left_to_the_class_and_a_custom_one_is_updated():
    cfg = load_config(HoldsDefaultDict, None, ["plain.table.z=3", "custom.table.z=3"])
    assert cfg.plain.table == {"z": 3}  # as before: the class's own default is not merged in
    assert cfg.custom.table == {"x": 5, "y": 6, "z": 3}
    assert load_config(HoldsDefaultDict, None, ["custom.table={z: 3}"]).custom.table == {"z": 3}
