"""Load a YAML spec plus dotted ``key=value`` overrides into :class:`ExperimentConfig`, with type and bound checks."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mal_core.config.experiment import DEPRECATED_ALIASES, KEY_ALIASES, ExperimentConfig
from mal_core.errors import SpecError

#: Bounds of a spec document (a spec file, a ``--set`` value, ``--spec-overrides``): nesting depth, values after
#: YAML aliases are expanded (a few anchors can otherwise stand for gigabytes), and the size of a spec file.
MAX_SPEC_DEPTH = 32
MAX_SPEC_NODES = 100_000
MAX_SPEC_BYTES = 4 << 20

log = logging.getLogger(__name__)


def check_yaml_bounds(text: str, source: str, field: str) -> None:
    """Walk the YAML events of ``text`` (no object is built) and refuse, with a :class:`SpecError` naming
    ``source``, a document nested deeper than :data:`MAX_SPEC_DEPTH` or one that expands to more than
    :data:`MAX_SPEC_NODES` values through anchors and aliases (``&a`` / ``*a``)."""
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [expanded size so far, anchor] of each open mapping/sequence
    total = 0

    def add(size: int) -> None:
        nonlocal total
        total += size
        if total > MAX_SPEC_NODES:
            raise SpecError(f"{source} expands to more than {MAX_SPEC_NODES} values through YAML anchors and aliases "
                            "(&name / *name); refused as a possible YAML bomb", field=field,
                            hint="write the values out, without nested aliases")
        if stack:
            stack[-1][0] += size

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(stack) >= MAX_SPEC_DEPTH:
                    raise SpecError(f"{source} is nested deeper than {MAX_SPEC_DEPTH} levels", field=field,
                                    hint="a spec is a few sections of plain values")
                stack.append([0, event.anchor])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                size, anchor = stack.pop()
                size += 1
                if anchor:
                    sizes[anchor] = size
                add(size)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1)
            elif isinstance(event, yaml.AliasEvent):
                add(sizes.get(event.anchor, 1))
    except yaml.YAMLError:
        return  # the caller's own parse reports the syntax error


def check_json_depth(value: Any, source: str, field: str, max_depth: int = MAX_SPEC_DEPTH) -> None:
    """Refuse (:class:`SpecError` naming ``source``) a parsed JSON/YAML value nested deeper than ``max_depth``."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise SpecError(f"{source} is nested deeper than {max_depth} levels", field=field,
                                hint="a spec is a few sections of plain values")
            todo.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))


def load_yaml_bounded(text: str, source: str, field: str) -> Any:
    """``yaml.safe_load`` of ``text`` after :func:`check_yaml_bounds`; a syntax error is a :class:`SpecError`."""
    check_yaml_bounds(text, source, field)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML: {exc}", field=field) from exc
    except RecursionError as exc:
        raise SpecError(f"{source} is nested too deeply", field=field) from exc


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; return it normalised (int -> float where a float is due)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise SpecError(f"{key} must not be null (expected {_type_name(inner)})", field=key)
    origin = typing.get_origin(inner)
    if origin in (list, list):
        (item_tp,) = typing.get_args(inner) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{key} must be a list of {_type_name(item_tp)}, got {value!r}", field=key)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{key} must be a boolean (true/false), got {value!r}", field=key)
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpecError(f"{key} must be an integer, got {value!r}", field=key)
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-6" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        raise SpecError(f"{key} must be a number, got {value!r}", field=key)
    if inner is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{key} must be a string, got {value!r}", field=key)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    options = meta.get("options")
    if options is not None and value not in options:
        raise SpecError(f"{key} must be one of {options}, got {value!r}", field=key)
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise SpecError(f"{key} must be >= {lo}, got {value!r}", field=key)
        if hi is not None and value > hi:
            raise SpecError(f"{key} must be <= {hi}, got {value!r}", field=key)


def leaf_fields(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, dataclasses.Field]:
    """All leaf parameters of a config dataclass by dotted key, in declaration order."""
    out: dict[str, dataclasses.Field] = {}
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_fields(tp, key + "."))
        else:
            out[key] = f
    return out


def _unknown_key_error(key: str, known: Iterable[str]) -> SpecError:
    close = difflib.get_close_matches(key, list(known) + list(KEY_ALIASES), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SpecError(f"unknown spec key {key!r}{hint}", field=key)


def _build(cls: type, data: Mapping[str, Any], prefix: str, explicit: set[str]) -> Any:
    if not isinstance(data, Mapping):
        raise SpecError(f"{prefix.rstrip('.') or 'spec'} must be a mapping, got {data!r}", field=prefix.rstrip("."))
    hints = _type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key_error(key, leaf_fields(ExperimentConfig))
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + ".", explicit)
        else:
            coerced = _coerce(value, tp, key)
            _check_meta(coerced, names[name].metadata, key)
            kwargs[name] = coerced
            explicit.add(key)
    return cls(**kwargs)


def get_dotted(tree: Mapping[str, Any], key: str) -> Any:
    """Value at a dotted key of a nested mapping, or None when any part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def get_field(cfg: Any, key: str) -> Any:
    """Value of a dotted key of a config object (attribute access: ``get_field(cfg, "train.lr")``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating sections; a non-section in the way is a :class:`SpecError`."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"cannot set {key!r}: {part!r} is not a section", field=key)
        node = child
    node[parts[-1]] = value


def _has_dotted(tree: Mapping[str, Any], key: str) -> bool:
    *sections, name = key.split(".")
    node: Any = tree
    for part in sections:
        node = node.get(part) if isinstance(node, Mapping) else None
    return isinstance(node, Mapping) and name in node


def _same_value(a: Any, b: Any) -> bool:
    """Equal, also across spellings of one number (YAML 1.1 reads ``1e-6`` as a string, JSON as a float)."""
    if a == b:
        return True
    try:
        return not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _conflict(first: str, first_value: Any, second: str, second_value: Any, canonical: str) -> SpecError:
    return SpecError(f"{first}={first_value!r} and {second}={second_value!r} conflict: both set {canonical}; give "
                     "only one of them", field=canonical)


_warned: set[str] = set()


def warn_deprecated(key: str) -> None:
    """Log once per process that ``key`` is a deprecated alias and which key replaces it."""
    if key in DEPRECATED_ALIASES and key not in _warned:
        _warned.add(key)
        log.warning("%s is deprecated (it still works): use %s", key, KEY_ALIASES[key])


def _apply_aliases(tree: dict[str, Any], warn: bool = True) -> None:
    for alias, canonical in KEY_ALIASES.items():
        sec, name = alias.split(".")
        node = tree.get(sec)
        if isinstance(node, dict) and name in node:
            if warn:
                warn_deprecated(alias)
            value = node.pop(name)
            if _has_dotted(tree, canonical):
                current = get_dotted(tree, canonical)
                if not _same_value(value, current):
                    raise _conflict(alias, value, canonical, current, canonical)
            set_dotted(tree, canonical, value)


def check_alias_conflicts(items: Iterable[tuple[str, str, Any]]) -> None:
    """Refuse one layer of overrides, ``(name as given, dotted key, value)``, that gives two names of the same key
    different values: an alias of :data:`KEY_ALIASES` and its canonical key, or a shorthand (``--epochs``,
    ``{"lr": ...}``) and its dotted key. The same name given twice is not a conflict (the later value wins)."""
    seen: dict[str, tuple[str, Any]] = {}
    for name, key, value in items:
        canonical = KEY_ALIASES.get(key, key)
        prev = seen.get(canonical)
        if prev is not None and prev[0] != name and not _same_value(prev[1], value):
            raise _conflict(prev[0], prev[1], name, value, canonical)
        seen[canonical] = (name, value)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is read as YAML (so ``5``, ``1e-6``, ``[0, 1]``, ``true`` work)."""
    if "=" not in text:
        raise SpecError(f"override {text!r} must look like dotted.key=value", field=text)
    key, raw = text.split("=", 1)
    key = key.strip()
    check_yaml_bounds(raw, f"--set {key}", key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist", field="spec")
    if p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {str(p)!r} is {p.stat().st_size} bytes, over the {MAX_SPEC_BYTES} a spec may be",
                        field="spec", hint="a spec is a few sections of plain values")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {str(p)!r} cannot be read as text: {exc}", field="spec") from exc
    data = load_yaml_bounded(text, f"spec file {str(p)!r}", "spec") or {}
    if not isinstance(data, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping at the top level", field="spec")
    return data


def parse_spec(
    data: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | Iterable[str] = ()
) -> tuple[ExperimentConfig, set[str]]:
    """Build a validated config from a spec mapping and overrides; also return the explicitly set dotted keys.

    ``overrides`` is either a mapping of dotted keys to values or an iterable of ``key=value`` strings. Seed-document
    aliases (``model.crop_size``, ``model.load_mask``) are accepted anywhere a key is; an alias and its canonical key
    with different values in the spec (or among the overrides) are an error naming both.
    """
    tree: dict[str, Any] = _deep_copy(dict(data or {}))
    _apply_aliases(tree)
    items = list(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    check_alias_conflicts((k, k, v) for k, v in items)
    for key, value in items:
        warn_deprecated(key)
        set_dotted(tree, KEY_ALIASES.get(key, key), value)
    explicit: set[str] = set()
    cfg = _build(ExperimentConfig, tree, "", explicit)
    return cfg, explicit


def load_spec(path: str | Path | None, overrides: Mapping[str, Any] | Iterable[str] = ()) -> ExperimentConfig:
    """Load a YAML spec file (or defaults when ``path`` is None) and apply dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    return parse_spec(data, overrides)[0]


def canonical_keys(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a stored spec (e.g. a checkpoint's) with every alias moved to its canonical key, silently: a spec
    written before a key moved is not the user's to fix."""
    out = _deep_copy(dict(tree))
    _apply_aliases(out, warn=False)
    return out


def spec_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The spec as a plain nested dict (YAML/JSON friendly)."""
    return dataclasses.asdict(cfg)


def dump_spec(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved spec as YAML atomically."""
    from mal_core.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(spec_to_dict(cfg), sort_keys=False))


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
