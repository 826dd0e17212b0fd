"""Config dataclasses -> ``schemas/<action>.schema.json``: TAO's schema shape that is also valid JSON Schema 2020-12.

Shape. The top level carries TAO's keys ``type``, ``properties``, ``default``, ``automl_default_parameters``,
``automl_disabled_parameters``, ``popular`` (nested dict of popular leaf defaults) and ``required``; each property
carries ``type``, ``title``, ``description``, ``default`` and, when declared, ``minimum``/``maximum``, ``enum``,
``option_weights``, ``math_cond``, ``depends_on``, ``parent_param``, ``popular``, ``automl_enabled``, ``examples``,
``x_automl_reason`` and ``x_automl_range`` (the default search interval where it is narrower than
``minimum``/``maximum``). Validators ignore the TAO-only keywords, so the same file drives AutoML and validates specs.

Departures from TAO, all so that standard validators work:

* ``type`` is a JSON Schema name (``number``, ``integer``, ``boolean``, ``string``, ``array`` with ``items``,
  ``object``), never TAO's ``float``/``categorical``/``collection``. ``Optional[X]`` becomes ``[X, "null"]``.
* An unbounded side is omitted (no ``Infinity``/``NaN`` tokens; files are written with ``allow_nan=False``).
* Sections are ``object`` with ``additionalProperties: false``, so an unknown key fails and the error names it.
* TAO moves the root ``automl_disabled_parameters`` into ``properties``; here it stays at the top level only.
* Seed-document aliases (``KEY_ALIASES``, e.g. ``model.crop_size``) are properties too, marked ``deprecated: true``
  with ``x_alias_of``, so a spec the loader accepts also validates; they have no ``default`` and are AutoML-disabled.

``required``. TAO's ``required`` lists, per object, the children that hold a parameter declared ``required=True``
(top level: the sections that contain one, e.g. ``evaluate`` for ``evaluate.checkpoint``). That is exactly JSON
Schema's "key must be present", which every complete spec (a template merged with overrides) satisfies, because the
template carries every key. It does not demand a non-empty value: required-but-empty defaults such as
``evaluate.checkpoint: ""`` must stay valid in the template. The dotted list of required parameters, which must be
set to a non-empty value before the action runs, is ``x_required_parameters`` (a TAO-ignored extension); the runtime
check is ``mal_core.config.check_for_action``. A partial user spec is not meant to be validated on its own; merge it
with the template first, as the runtime does.

AutoML lists. ``automl_default_parameters``: dotted leaves declared ``automl_enabled=True`` (searched by default).
``automl_disabled_parameters``: every section (TAO marks collections disabled), every leaf declared
``automl_enabled=False`` and every alias. Leaves with ``automl_enabled=None`` are neutral: in neither list and only
searched when explicitly requested. Both lists are sorted. Section objects carry the same lists restricted to their
descendants (only when non-empty), plus ``popular`` (names of popular children) and ``required``.

Action filtering (TAO ``filter_schema``): a top-level key is kept when it is ``train``, the current action, or not an
action name at all. So every schema has ``results_dir``, ``dataset``, ``model`` and ``train``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

from codegen import SCHEMA_VERSION, CodegenError, header_text
from mal_core.config.actions import ACTIONS
from mal_core.config.experiment import KEY_ALIASES, ExperimentConfig

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclasses.dataclass(frozen=True)
class Node:
    """One field of the config tree: a section or a leaf parameter."""

    dotted: str
    field: dataclasses.Field
    annotation: Any
    is_section: bool

    @property
    def meta(self) -> typing.Mapping[str, Any]:
        """The field's metadata mapping."""
        return self.field.metadata


def kept_top_level(name: str, action: str) -> bool:
    """TAO's filtering rule: keep ``train``, the current action's section, and every key that is not an action's
    section."""
    return name == "train" or name == ACTIONS[action].section or name not in {d.section for d in ACTIONS.values()}


def walk(cls: type = ExperimentConfig, prefix: str = "") -> Iterator[Node]:
    """Every section and leaf under ``cls`` in declaration order (a section comes before its children)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        dotted = f"{prefix}{f.name}"
        is_section = dataclasses.is_dataclass(tp)
        if is_section != bool(f.metadata.get("section")):
            raise CodegenError(f"{dotted}: nested dataclasses must be declared with section() and only those")
        yield Node(dotted, f, tp, is_section)
        if is_section:
            yield from walk(tp, dotted + ".")


def nodes_for_action(action: str) -> list[Node]:
    """The nodes that the schema of ``action`` holds, after action filtering."""
    return [n for n in walk() if kept_top_level(n.dotted.split(".")[0], action)]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise CodegenError(f"unsupported union type {tp!r}")
    return tp, False


def json_type(tp: Any, where: str) -> dict[str, Any]:
    """JSON Schema type fragment for a Python annotation (``list[int]`` -> array of integer)."""
    inner, nullable = unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if item not in _SCALARS:
            raise CodegenError(f"{where}: unsupported list item type {item!r}")
        out: dict[str, Any] = {"type": "array", "items": {"type": _SCALARS[item]}}
    elif inner in _SCALARS:
        out = {"type": _SCALARS[inner]}
    else:
        raise CodegenError(f"{where}: unsupported type {tp!r}")
    if nullable:
        out["type"] = [out["type"], "null"]
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise CodegenError(f"{f.name}: every parameter needs a default")


def _plain(value: Any, where: str) -> Any:
    """JSON/YAML friendly copy of a default; rejects values JSON can't hold."""
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise CodegenError(f"{where}: non-finite default {value!r}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CodegenError(f"{where}: default {value!r} is not JSON-friendly")


def section_default(cls: type, prefix: str = "") -> dict[str, Any]:
    """Nested default values of a config dataclass (declaration order; ``None`` stays ``None``)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = section_default(tp, f"{prefix}{f.name}.")
        else:
            out[f.name] = _plain(_default(f), prefix + f.name)
    return out


def _bound(value: float, scalar: str, where: str) -> int | float:
    if not math.isfinite(value):
        raise CodegenError(f"{where}: declare an unbounded side as None, not {value!r}")
    if scalar == "integer":
        if float(value) != int(value):
            raise CodegenError(f"{where}: integer parameter with non-integer bound {value!r}")
        return int(value)
    return float(value)


def leaf_schema(node: Node) -> dict[str, Any]:
    """Schema of one leaf parameter, carrying every metadata key it declares."""
    meta = node.meta
    out = json_type(node.annotation, node.dotted)
    scalar_holder = out["items"] if out["type"] == "array" else out
    scalar = scalar_holder["type"]
    scalar = scalar[0] if isinstance(scalar, list) else scalar
    out["title"] = meta["title"]
    out["description"] = meta["description"]
    out["default"] = _plain(_default(node.field), node.dotted)
    for key in ("minimum", "maximum"):
        if meta.get(key) is not None:
            scalar_holder[key] = _bound(meta[key], scalar, f"{node.dotted}.{key}")
    if meta.get("options") is not None:
        enum = _plain(list(meta["options"]), node.dotted)
        if isinstance(out["type"], list):
            enum.append(None)
        out["enum"] = enum
    if meta.get("option_weights") is not None:
        out["option_weights"] = _plain(list(meta["option_weights"]), node.dotted)
    for key in ("math_cond", "depends_on"):
        if meta.get(key):
            out[key] = meta[key]
    if meta.get("parent_param"):
        out["parent_param"] = True
    if meta.get("popular"):
        out["popular"] = True
    if meta.get("automl_enabled") is not None:
        out["automl_enabled"] = bool(meta["automl_enabled"])
    if meta.get("automl_reason"):
        out["x_automl_reason"] = meta["automl_reason"]
    if meta.get("automl_range") is not None:
        out["x_automl_range"] = _plain(list(meta["automl_range"]), node.dotted)
    if meta.get("examples") is not None:
        out["examples"] = _plain(list(meta["examples"]), node.dotted)
    return out


def alias_schema(alias: str, canonical: Node) -> dict[str, Any]:
    """Schema of a seed-document alias key: the canonical type and bounds, no default, AutoML-disabled."""
    out = leaf_schema(canonical)
    for key in ("default", "popular", "x_automl_reason", "x_automl_range", "examples", "option_weights", "math_cond",
                "depends_on"):
        out.pop(key, None)
    out["title"] = f"{canonical.meta['title']} (alias)"
    out["description"] = f"Alias of {canonical.dotted}, accepted for TAO compatibility; prefer {canonical.dotted}."
    out["deprecated"] = True
    out["automl_enabled"] = False
    out["x_alias_of"] = canonical.dotted
    return out


def _aliases_for(nodes: list[Node]) -> dict[str, Node]:
    by_key = {n.dotted: n for n in nodes}
    sections = {n.dotted for n in nodes if n.is_section}
    out: dict[str, Node] = {}
    for alias, canonical in KEY_ALIASES.items():
        parent = alias.rsplit(".", 1)[0]
        if parent not in sections or canonical not in by_key:
            continue
        if alias in by_key:
            raise CodegenError(f"alias {alias} collides with a declared parameter")
        out[alias] = by_key[canonical]
    return out


def _under(prefix: str, names: list[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(prefix + "."))


def build_schema(action: str) -> dict[str, Any]:
    """The schema dict of one action (see the module docstring for the layout)."""
    if action not in ACTIONS:
        raise CodegenError(f"unknown action {action!r}")
    nodes = nodes_for_action(action)
    aliases = _aliases_for(nodes)
    leaves = [n for n in nodes if not n.is_section]
    enabled = sorted(n.dotted for n in leaves if n.meta.get("automl_enabled") is True)
    disabled = sorted(
        [n.dotted for n in nodes if n.is_section or n.meta.get("automl_enabled") is False] + list(aliases)
    )
    required_leaves = [n.dotted for n in leaves if n.meta.get("required")]

    objects: dict[str, dict[str, Any]] = {"": {"type": "object", "additionalProperties": False, "properties": {}}}
    popular: dict[str, Any] = {}
    for node in nodes:
        parent_key, _, name = node.dotted.rpartition(".")
        parent = objects[parent_key]
        if node.is_section:
            obj: dict[str, Any] = {
                "type": "object",
                "title": node.meta["title"],
                "description": node.meta["description"],
                "additionalProperties": False,
                "automl_enabled": False,
                "properties": {},
                "default": section_default(node.annotation, node.dotted + "."),
            }
            objects[node.dotted] = obj
            parent["properties"][name] = obj
            continue
        parent["properties"][name] = leaf_schema(node)
        if node.meta.get("popular"):
            if parent_key:
                parent.setdefault("popular", []).append(name)
            tree = popular
            for part in node.dotted.split(".")[:-1]:
                tree = tree.setdefault(part, {})
            tree[name] = parent["properties"][name]["default"]
    for alias, canonical in aliases.items():
        parent_key, _, name = alias.rpartition(".")
        objects[parent_key]["properties"][name] = alias_schema(alias, canonical)

    for key, obj in objects.items():
        prefix_required = [r for r in required_leaves if not key or r.startswith(key + ".")]
        depth = key.count(".") + 1 if key else 0
        children = sorted({r.split(".")[depth] for r in prefix_required})
        if key:
            if children:
                obj["required"] = children
            for list_name, names in (("automl_default_parameters", enabled), ("automl_disabled_parameters", disabled)):
                under = _under(key, names)
                if under:
                    obj[list_name] = under
        else:
            obj["required"] = children

    root = objects[""]
    top_default = {name: v for name, v in section_default(ExperimentConfig).items() if kept_top_level(name, action)}
    root.update(
        {
            "$schema": DRAFT,
            "$comment": header_text("mal_core/config/experiment.py"),
            "title": f"MAL {action} spec",
            "description": f"Experiment spec for `mal {action}` (TAO MAL layout). Validate a complete spec: the "
            f"template references/spec_template_{action}.yaml merged with overrides.",
            "default": top_default,
            "popular": popular,
            "automl_default_parameters": enabled,
            "automl_disabled_parameters": disabled,
            "x_required_parameters": sorted(required_leaves),
            "x_mal_schema": {
                "schema_version": SCHEMA_VERSION,
                "network_arch": "mal",
                "action": action,
                "schema_action": action,
                "source": "mal_core.config.experiment.ExperimentConfig",
                "aliases": {a: c.dotted for a, c in sorted(aliases.items())},
            },
        }
    )
    return root


def build_schemas() -> dict[str, dict[str, Any]]:
    """Schemas of every action, by action name."""
    return {action: build_schema(action) for action in ACTIONS}
