"""Declaring keys, and walking a YAML document against the declarations.

A key is declared once, as a field of the frozen dataclasses in keys.py::

    interval: float = key(1.0, duration(0.2, MINUTE), "how often the services are probed")

``key()`` is ``dataclasses.field(default=...)`` with the converter and the doc as metadata, so the
dataclass default *is* the key's default.  ``schema_of(Config)`` reads the fields back into a
tree of Leaf / Group / Section nodes, which load() walks, the example check in the tests reads,
and ``keys()`` lists.  A field without key()/section() (Config.sources, WebUIConfig.port) is not
a YAML key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from localaid.config.convert import Converter, Ctx, Invalid
from localaid.config.yamlfile import Item, show

_DECL = "localaid.config"      # the metadata entry of a declared field


@dataclass(frozen=True)
class _Decl:
    conv: Converter | None
    doc: str
    yaml: str | None = None                  # dotted YAML path inside the section; default: the field
    attrs: tuple[str, ...] | None = None     # attributes the converted value sets; default: the field
    section: type | None = None


def key(default: Any, conv: Converter, doc: str, *, yaml: str | None = None,
        attrs: tuple[str, ...] | None = None) -> Any:
    """Declare a key: its default, its converter and a one-line doc.

    yaml="start_grace.ollama" puts the key under a nested YAML mapping that has no dataclass of its
    own (a Group).  attrs=("host", "port") makes one key set several attributes: the converter
    returns a tuple, and the key's default is the tuple of those attributes' defaults."""
    if "\n" in doc or not doc.strip():
        raise ValueError(f"a key's doc is one non-empty line, got {doc!r}")
    return dataclasses.field(default=default, metadata={_DECL: _Decl(conv, doc, yaml, attrs)})


def section(cls: type, doc: str) -> Any:
    """Declare a nested YAML mapping, named as the field, that becomes its own dataclass
    (webui.admin → AdminConfig)."""
    return dataclasses.field(default_factory=cls, metadata={_DECL: _Decl(None, doc, section=cls)})


@dataclass(frozen=True)
class Leaf:
    conv: Converter
    doc: str
    attrs: tuple[str, ...]     # the dataclass attribute(s) the value lands in
    default: Any               # the declared default; a tuple when attrs has several


@dataclass(frozen=True)
class Group:
    """A nested YAML mapping whose keys land in the enclosing dataclass (health.backoff.max)."""
    fields: dict[str, Any]


@dataclass(frozen=True)
class Section:
    """A nested YAML mapping that becomes its own dataclass."""
    cls: type
    fields: dict[str, Any]
    doc: str = ""


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default   # type: ignore[misc]


def schema_of(cls: type, doc: str = "") -> Section:
    """The schema tree of a dataclass, from its declared fields, in declaration order."""
    tree: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for f in fields.values():
        decl = f.metadata.get(_DECL)
        if decl is None:
            continue
        *groups, name = (decl.yaml or f.name).split(".")
        level = tree
        for g in groups:
            level = level.setdefault(g, Group({})).fields
        if name in level:
            raise TypeError(f"{cls.__name__}.{f.name}: YAML key {name!r} is declared twice")
        if decl.section is not None:
            level[name] = schema_of(decl.section, decl.doc)
        else:
            attrs = decl.attrs or (f.name,)
            defaults = tuple(_default(fields[a]) for a in attrs)
            level[name] = Leaf(decl.conv, decl.doc, attrs, defaults if len(attrs) > 1 else defaults[0])
    return Section(cls, tree, doc)


def keys(root: Section, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, node) for every key of the schema, sections and groups included, in order."""
    for name, node in root.fields.items():
        path = prefix + name
        yield path, node
        if isinstance(node, (Section, Group)):
            yield from keys(node, path + ".")


def leaves(root: Section) -> dict[str, Leaf]:
    """Every key that holds a value ("health.backoff.max" → its Leaf)."""
    return {p: n for p, n in keys(root) if isinstance(n, Leaf)}


# ----------------------------------------------------------------------------------- walking

def _walk(fields: dict[str, Any], item: Item, key: str, ctx: Ctx, kwargs: dict[str, Any]) -> None:
    if item.kind != "map":
        ctx.error(item, key, f"expected a mapping, got {show(item)}")
        ctx.failed.add(key)
        return
    for name, child in item.value.items():
        path = f"{key}.{name}" if key else name
        spec = fields.get(name)
        if spec is None:
            ctx.error(child, path, ctx.unknown(name, fields))
            continue
        ctx.given[path] = child
        if child.is_null:
            continue
        if isinstance(spec, Section):
            kwargs[name] = build(spec, child, path, ctx)
        elif isinstance(spec, Group):
            _walk(spec.fields, child, path, ctx, kwargs)
        else:
            before = len(ctx.problems)
            try:
                value = spec.conv(child, ctx, path)
            except Invalid as e:
                ctx.error(child, path, str(e))
            if len(ctx.problems) > before:
                ctx.failed.add(path)
            elif len(spec.attrs) > 1:
                kwargs.update(zip(spec.attrs, value))
            else:
                kwargs[spec.attrs[0]] = value


def build(section: Section, item: Item, key: str, ctx: Ctx) -> Any:
    """The section's dataclass from a YAML mapping; absent and null keys keep their defaults."""
    kwargs: dict[str, Any] = {}
    _walk(section.fields, item, key, ctx, kwargs)
    return section.cls(**kwargs)
