"""Typed run configs: dataclasses filled from YAML files and dotted command-line overrides.

Every stage declares its config as a tree of dataclasses. ``load_config`` reads a YAML file
(optionally inheriting from another through a top-level ``base:`` key), applies overrides such as
``optim.lr=2e-4``, and checks every value against the dataclass field types:

* an unknown key is an error naming the key and the file it came from;
* a value of the wrong type is an error naming the key, the expected type and the file;
* a ``Literal[...]`` field only accepts one of its choices.

The resolved config is written next to every run's outputs with ``save_config`` so that a run can
always be reproduced from its folder.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from sld.errors import UserError

T = TypeVar("T")

BASE_KEY = "base"
_YAML_BOOL_WORDS = {True: ("yes", "on", "true", "y"), False: ("no", "off", "false", "n")}


class ConfigError(UserError):
    """A user-caused configuration error; the message names the key and where it came from."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _convert(value: Any, tp: Any, key: str, source: str, partial: bool = False, base: Any = None) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (ints widen to floats, dicts to dataclasses).

    With ``partial`` nested dataclasses are only checked (unknown keys, types), not built, so that a
    file can be validated on its own before command-line overrides fill in required keys. ``base``
    is the dataclass instance that a mapping updates (see ``_build``).
    """

    def fail(expected: str | None = None) -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' expects {expected or _type_name(tp)}, got {value!r} ({type(value).__name__})"
        )

    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and value not in choices:
            # YAML 1.1 reads no/off/false (yes/on/true) as booleans: map back to the choice written
            spelled = [c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOL_WORDS[value]]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in choices:
            raise ConfigError(
                f"{source}: key '{key}' must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(
                    value,
                    arg,
                    key,
                    source,
                    partial,
                    base if base is not None and base.__class__ is arg else None,
                )
            except ConfigError:
                continue
        raise fail()
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail(f"a mapping of {tp.__name__} fields")
        return _build(tp, value, key, source, partial, base)
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise fail()
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise fail()
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _convert(k, key_tp, f"{key}.{k}", source): _convert(v, val_tp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what Python reads as a float.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail()
    return value


def _field_default(field: dataclasses.Field, base: Any) -> Any:
    """The value a field holds when nothing sets it: ``base``'s (when given), else the field's default."""
    if base is not None:
        return getattr(base, field.name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _build(
    cls: type[T], data: Mapping[str, Any], prefix: str, source: str, partial: bool = False, base: Any = None
) -> T:
    """Build ``cls`` from a mapping of (some of) its fields.

    A mapping given for a nested dataclass field updates that field's default instance, not the
    nested class's own defaults: ``quickstart.autoencoder`` defaults to a small model through its
    ``default_factory``, and ``autoencoder.loop.max_minutes=8`` must keep that model. Likewise
    ``base`` (an instance of ``cls``) supplies every field that ``data`` does not set. Keys set one at
    a time into a dict field (``autoencoder.model.decoder_config.dropout_rate=0.1``, a ``_Section``)
    update the dict that ``base`` holds there when it differs from the class's own default (the
    quickstart's small decoder keeps its other keys); a dict written whole (``decoder_config={...}`` or
    a mapping in a file) replaces it, and the class's own default dicts are left to the class
    (``AutoencoderConfig`` fills a T5 ``decoder_config``'s missing keys itself, and leaves another
    family's alone).
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {known})")
        default = _field_default(fields[name], base) if isinstance(value, Mapping) else None
        nested_base = default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None
        if (
            isinstance(value, _Section)
            and isinstance(default, Mapping)
            and default != _field_default(fields[name], None)
        ):
            value = _deep_merge(dict(default), value)
        kwargs[name] = _convert(value, hints[name], key, source, partial, nested_base)
    if partial:
        return kwargs  # type: ignore[return-value]
    if base is not None:
        for name in fields:
            if name not in kwargs:
                kwargs[name] = copy.deepcopy(getattr(base, name))
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" under '{prefix}'" if prefix else ""
        raise ConfigError(f"{source}: missing required key(s){where}: {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise ConfigError(f"{source}: invalid '{prefix or cls.__name__}': {err}") from err


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving a top-level ``base:`` (a path relative to this file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: key '{BASE_KEY}' must be a path to another YAML file")
        parent = read_yaml(path.parent / base, (*_seen, path.resolve()))
        data = _deep_merge(parent, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


class _Section(dict):
    """A mapping made by dotted override keys (``a.b=1``), not written whole: where it lands on a dict
    field it updates that field's default dict instead of replacing it (see ``_build``)."""


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with every ``key.sub=value`` override set in it (sections the keys create are
    ``_Section``s; a section that ``data`` already holds stays what it was)."""
    data = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = _Section()
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node[part] = type(child)(child)  # a copy: the caller's data is not changed
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a ``cls`` config from an optional YAML file plus ``key.sub=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    # Check the file and the overrides on their own first, so an error names where the bad key came from.
    if path is not None:
        _build(cls, data, "", str(path), partial=True)
    if overrides:
        _build(cls, apply_overrides({}, overrides), "", "command-line override", partial=True)
    source = " + ".join(
        part for part in (str(path) if path else "", "command-line overrides" if overrides else "") if part
    )
    return _build(cls, apply_overrides(data, overrides), "", source or "defaults")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists) for YAML/JSON output."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with ``load_config``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from err
    return path


__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
]
