"""localaid.config key declarations: one per key, and the shipped example checked against them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from localaid.config import Config, declared_keys, load
from localaid.config import convert as c
from localaid.config.convert import Ctx
from localaid.config.keys import SCHEMA
from localaid.config.schema import Group, Leaf, Section, build, key, keys, schema_of, section
from localaid.config.yamlfile import Item, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "localaid.yaml"
_KEY_LINE = re.compile(r"# (\s*)([a-z_][a-z0-9_]*:(\s|$)|- )")


def _example_items() -> Item:
    """The example with every commented-out key line enabled, as Items (with lines)."""
    text = "".join(line[2:] if _KEY_LINE.match(line) else line
                   for line in EXAMPLE.read_text().splitlines(keepends=True))
    problems: list = []
    ok, item = parse(text, str(EXAMPLE), problems)
    assert ok and not problems and item is not None
    return item


def _at(item: Item, path: str) -> Item | None:
    for name in path.split("."):
        if item.kind != "map" or name not in item.value:
            return None
        item = item.value[name]
    return item


def _default_of(cfg: Config, leaf: Leaf, path: str):
    """The value the attribute(s) of ``leaf`` have in ``cfg``."""
    section, node = cfg, SCHEMA
    for name in path.split(".")[:-1]:
        node = node.fields[name]
        if isinstance(node, Section):       # a Group ("health.backoff") has no object of its own
            section = getattr(section, name)
    values = tuple(getattr(section, a) for a in leaf.attrs)
    return values if len(values) > 1 else values[0]


# ------------------------------------------------------------------- the example vs the schema

def test_every_declared_key_is_in_the_example_with_its_default():
    doc = _example_items()
    assert len(declared_keys()) >= 45
    missing, wrong = [], []
    for path, leaf in declared_keys().items():
        item = _at(doc, path)
        if item is None:
            missing.append(path)
            continue
        value = None if item.is_null else leaf.conv(item, Ctx([], str(EXAMPLE)), path)
        if value != leaf.default:
            wrong.append(f"{EXAMPLE.name}:{item.line}: {path}: shows {value!r}, declared default {leaf.default!r}")
    assert (missing, wrong) == ([], []), "(keys the example lacks, keys it shows with another value)"


def test_the_example_names_no_undeclared_key():
    def walk(item: Item, node, prefix: str) -> list[str]:
        out = []
        for name, child in item.value.items():
            path = prefix + name
            spec = node.fields.get(name)
            if spec is None:
                out.append(f"{EXAMPLE.name}:{child.line}: {path}")
            elif isinstance(spec, (Section, Group)) and child.kind == "map":
                out += walk(child, spec, path + ".")
        return out

    assert walk(_example_items(), SCHEMA, "") == []


def test_every_key_has_a_one_line_doc_and_a_converter():
    for path, node in keys(SCHEMA):
        if isinstance(node, Leaf):
            assert node.doc.strip() and "\n" not in node.doc, path
            assert callable(node.conv), path
        elif isinstance(node, Section):
            assert node.doc.strip(), path


def test_defaults_come_from_the_declarations():
    cfg = Config()
    for path, leaf in declared_keys().items():
        assert _default_of(cfg, leaf, path) == leaf.default, path
    assert declared_keys()["webui.listen"].default == ("127.0.0.1", 3000)
    assert declared_keys()["health.backoff.max"].attrs == ("backoff_max",)


def test_schema_follows_declaration_order():
    assert list(SCHEMA.fields) == ["ollama", "webui", "gpu", "health", "metrics", "backup", "disk"]
    assert list(SCHEMA.fields["health"].fields) == [
        "interval", "timeout", "failures", "start_grace", "model_load_grace", "busy_start_limit", "backoff", "restart_limit",
        "runner_watchdog"]


# ------------------------------------------------------------------ declaring keys is one place

@dataclasses.dataclass(frozen=True, slots=True)
class _Inner:
    level: int = key(3, c.integer(1, 9), "how much")


@dataclasses.dataclass(frozen=True, slots=True)
class _Sample:
    name: str = key("x", c.string("a name"), "what it is called")
    delay: float = key(2.0, c.duration(0, 60), "how long to wait first", yaml="wait.first")
    inner: _Inner = section(_Inner, "a section")
    note: str = ""                                     # not a key


def test_a_new_key_is_one_field():
    schema = schema_of(_Sample)
    assert list(schema.fields) == ["name", "wait", "inner"]
    problems: list = []
    _, item = parse("name: y\nwait: {first: 5s}\ninner: {level: 7}\n", "/s.yaml", problems)
    value = build(schema, item, "", Ctx(problems, "/s.yaml", [p for p, _ in keys(schema)]))
    assert not problems
    assert value == _Sample("y", 5.0, _Inner(7))
    _, item = parse("wait: {first: 2m}\nnote: hi\n", "/s.yaml", problems)
    build(schema, item, "", Ctx(problems, "/s.yaml", [p for p, _ in keys(schema)]))
    assert [str(p) for p in problems] == [
        "/s.yaml:1: wait.first: must be between 0 s and 1 min, got \"2m\"",
        '/s.yaml:2: note: unknown key (expected one of: name, wait, inner)']


def test_a_key_declared_twice_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Twice:
        a: int = key(1, c.integer(0, 9), "one", yaml="x")
        b: int = key(2, c.integer(0, 9), "two", yaml="x")

    with pytest.raises(TypeError, match="declared twice"):
        schema_of(Twice)


@pytest.mark.parametrize("doc", ["", "  ", "two\nlines"])
def test_a_key_needs_a_one_line_doc(doc):
    with pytest.raises(ValueError):
        key(1, c.integer(0, 9), doc)


def test_example_loads_unchanged_as_shipped():
    # trusted_uid=None: a checkout may belong to another user than the one running the tests
    assert dataclasses.replace(load(str(EXAMPLE), None, trusted_uid=None), sources=()) == Config()
