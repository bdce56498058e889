"""The project's config mechanism: typed dataclass trees loaded from YAML, with CLI overrides.

- `load_config(cls, path, overrides)` reads YAML (with `_base_` inheritance), applies `--set a.b.c=value`
  overrides (values parsed by yaml.safe_load, so `[1, 2]`, `0.5`, `true` work) and builds `cls`.
- Unknown keys are rejected with a message that names the key, where it is, and the allowed keys.
- Values are type-checked against the dataclass annotations (int, float, bool, str, list/tuple, Optional,
  Literal, dict, nested dataclasses); a dataclass may validate itself further in `__post_init__`
  (raise ValueError; it is reported as a ConfigError with the section's path).
- `to_dict(cfg)` / `save_yaml(cfg, path)` write the resolved config (atomically) so every run and bundle
  records exactly what it used.

`_base_: other.yaml` may appear in any mapping (top level or nested); its path is relative to the file that
names it, the base is loaded first and the mapping's own keys are merged over it (mappings deep-merge,
everything else replaces). A list of bases merges left to right.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union, get_args, get_origin

import yaml

from clean_ros.atomic import atomic_write_text

T = TypeVar("T")
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config that cannot be loaded: the message names the file / key and what is wrong."""


# --------------------------------------------------------------------------- YAML reading
def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, resolving `_base_` (at any nesting level) relative to the file."""
    return _read_yaml(Path(path), stack=())


def _read_yaml(path: Path, stack: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: circular _base_ inheritance: {chain}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return _resolve_bases(data, path, (*stack, path))


def _resolve_bases(node: Any, path: Path, stack: tuple[Path, ...]) -> Any:
    if isinstance(node, list):
        return [_resolve_bases(v, path, stack) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _resolve_bases(v, path, stack) for k, v in node.items()}
    bases = node.pop(BASE_KEY, None)
    if bases is None:
        return node
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = merge_dicts(merged, _read_yaml(path.parent / base, stack))
    return merge_dicts(merged, node)


def merge_dicts(base: dict, override: dict) -> dict:
    """Deep-merge: mappings merge recursively, any other value in `override` replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], yaml.safe_load(value))."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. head.iou_branch=true")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `a.b.c=value` overrides to a raw config mapping (a new dict is returned).

    A list element can be addressed by index (`head.anchors.0.matched_threshold=0.55`). Whether a key exists
    is checked later against the dataclass, so the error names the allowed keys.
    """
    data = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_list_index(key, node, keys, depth)]
                continue
            if not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(last, node, keys, len(keys) - 1)] = value
        else:
            node[last] = value
    return data


def _list_index(key: str, node: list, keys: list[str], depth: int) -> int:
    where = ".".join(keys[:depth]) or "<root>"
    try:
        index = int(key)
    except ValueError:
        raise ConfigError(f"override {'.'.join(keys)}: {where} is a list, {key!r} is not an index") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"override {'.'.join(keys)}: index {index} out of range for {where} (length {len(node)})")
    return index


def _deep_copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _deep_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deep_copy(v) for v in node]
    return node


# --------------------------------------------------------------------------- building dataclasses
def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; reject unknown keys; type-check values."""
    return _build_dataclass(cls, data, where)


def _build_dataclass(cls: type, data: Any, where: str) -> Any:
    label = where or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping for {cls.__name__}, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r} in {cls.__name__}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{label}: missing required key {missing[0]!r} in {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, where)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(tp)}" if len(errors) != 1 else errors[0])
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- public entry points
def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                data: dict | None = None) -> T:
    """Load `cls` from a YAML file (or a raw mapping `data`), then apply `--set` style overrides."""
    raw = read_yaml(path) if path is not None else _resolve_bases(dict(data or {}), Path.cwd() / "<dict>", ())
    raw = apply_overrides(raw, overrides)
    try:
        return from_dict(cls, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def to_dict(cfg: Any) -> Any:
    """The resolved config as plain YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config to `path` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, dump_yaml(cfg))


def add_override_argument(parser) -> None:
    """Add the standard `--set KEY=VALUE` (repeatable) option to an argparse parser."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. --set head.iou_branch=true (repeatable)")
