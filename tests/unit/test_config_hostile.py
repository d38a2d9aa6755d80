"""localaid.config on hostile or careless input: always a FILE[:LINE]: REASON problem, never a crash or a hang."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from localaid.config import ConfigError, load
from localaid.config import yamlfile


def _errors(tmp_path: Path, main: str | bytes | None = None, conf_d: dict[str, str | bytes] | None = None,
            **kw) -> list[str]:
    """The problems load() reports for these files, with the directory shown as "@"."""
    main_path = tmp_path / "localaid.yaml"
    if main is not None:
        main_path.write_bytes(main.encode() if isinstance(main, str) else main)
    for name, text in (conf_d or {}).items():
        (tmp_path / "conf.d").mkdir(exist_ok=True)
        (tmp_path / "conf.d" / name).write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load(str(main_path), str(tmp_path / "conf.d"), **kw)
    return [str(p).replace(str(tmp_path), "@") for p in info.value.errors]


TOO_DEEP = "nested more than 32 levels deep; a localaid configuration is at most 4 levels deep"


# ------------------------------------------------------------------------------------- depth

@pytest.mark.parametrize("text", [
    "x: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "x: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
    "[" * 100_000,                                     # unclosed as well
    "- " * 5_000 + "x\n",
], ids=["flow-lists-10000", "flow-maps-10000", "unclosed-100000", "block-lists-5000"])
def test_deep_nesting_is_a_problem_not_a_recursion_error(tmp_path, text):
    assert _errors(tmp_path, text) == [f"@/localaid.yaml:1: {TOO_DEEP}"]


def test_deep_block_mapping_names_the_line(tmp_path):
    text = "".join(" " * i + "a:\n" for i in range(500))
    # line 32: the key whose value is the 33rd level
    assert _errors(tmp_path, text) == [f"@/localaid.yaml:32: {TOO_DEEP}"]


def test_deep_nesting_in_conf_d_reported_with_the_rest(tmp_path):
    assert _errors(tmp_path, "health:\n  interval: fast\n", {"10-deep.yaml": "a: " + "[" * 10_000}) == [
        '@/localaid.yaml:2: health.interval: expected a duration such as "2s", got "fast"',
        f"@/conf.d/10-deep.yaml:1: {TOO_DEEP}"]


def test_nesting_through_aliases_is_bounded_too(tmp_path):
    text = "a0: &a0 " + "[" * 20 + "x" + "]" * 20 + "\na1: &a1 " + "[" * 20 + "*a0" + "]" * 20 + "\n"
    errors = _errors(tmp_path, text)
    assert len(errors) == 1 and errors[0].endswith(f"{TOO_DEEP} (through aliases)")


def test_recursion_error_is_caught_even_past_the_bound(monkeypatch):
    """Should the bound ever be set too high for the stack, the composer's RecursionError is still
    a problem of the file."""
    monkeypatch.setattr(yamlfile, "MAX_DEPTH", 10**9)
    problems: list = []
    assert yamlfile.parse("[" * 50_000 + "]" * 50_000, "/x.yaml", problems) == (False, None)
    assert len(problems) == 1 and problems[0].file == "/x.yaml" and "nested more than" in problems[0].reason


def test_legitimate_depth_still_loads(tmp_path):
    (tmp_path / "localaid.yaml").write_text(
        "ollama:\n  models:\n    - name: llama3\n      keep_warm: false\n")
    assert load(str(tmp_path / "localaid.yaml"), None).ollama.models[0].keep_warm is False


# ------------------------------------------------------------------------------ size and count

def test_too_many_values(tmp_path):
    assert _errors(tmp_path, "gpu:\n  ignore_xids: [" + "1, " * 30_000 + "]\n") == [
        "@/localaid.yaml:2: more than 20000 YAML values; a localaid configuration has a few hundred"]


@pytest.mark.parametrize("bomb", [
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] +
    [f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]" for i in range(1, 12)],
    ["a0: &a0 {" + ", ".join(f"k{j}: x" for j in range(10)) + "}"] +
    [f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i-1}" for j in range(10)) + "}" for i in range(1, 12)],
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] +
    [f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]" for i in range(1, 9)] +
    ["ollama:", "  environment: {A: *a8}", "  models: *a8"],
], ids=["lists", "mappings", "under-real-keys"])
def test_billion_laughs_is_cheap(tmp_path, bomb):
    start = time.monotonic()
    assert _errors(tmp_path, "\n".join(bomb) + "\n") == ["@/localaid.yaml: too many YAML nodes (alias expansion?)"]
    assert time.monotonic() - start < 10


def test_huge_file_is_not_read_whole(tmp_path):
    big = tmp_path / "localaid.yaml"
    with open(big, "wb") as f:
        f.truncate(8 << 30)                 # 8 GiB, sparse: reading it all would take long
    start = time.monotonic()
    assert _errors(tmp_path) == [
        "@/localaid.yaml: larger than 1 MiB; a localaid configuration is a few kB (is this the right file?)"]
    assert time.monotonic() - start < 10


def test_just_under_the_size_limit_is_parsed(tmp_path):
    text = "# " + "x" * 78 + "\n"
    (tmp_path / "localaid.yaml").write_text(text * ((1 << 20) // len(text)) + "health: {interval: 2s}\n")
    assert load(str(tmp_path / "localaid.yaml"), None).health.interval == 2.0


def test_overlong_key(tmp_path):
    assert _errors(tmp_path, "health:\n  " + "k" * 500 + ": 1\n") == [
        '@/localaid.yaml:2: health: key "' + "k" * 57 + '..." is longer than 200 characters']


# ---------------------------------------------------------------------------- bytes and kinds

@pytest.mark.parametrize("seed", range(12))
def test_binary_garbage(tmp_path, seed):
    data = random.Random(seed).randbytes(4096)
    errors = _errors(tmp_path, data, {"10-garbage.yaml": data[::-1]})
    assert errors and all(e.startswith(("@/localaid.yaml", "@/conf.d/10-garbage.yaml")) for e in errors)


@pytest.mark.parametrize("data, expected", [
    (b"health:\n  interval: 1s\x00\n", "@/localaid.yaml:2: control character #x0000 is not allowed in YAML"),
    (b"\xff\xfeh\x00e\x00", "@/localaid.yaml:1: not valid UTF-8 (byte 0xff in column 1); save the file as UTF-8"),
    (b"webui:\n  admin:\n    name: \xc3\n", "@/localaid.yaml:3: not valid UTF-8 (byte 0xc3 in column 11); "
                                           "save the file as UTF-8"),
    (b"\x7fELF\x02\x01\x01", "@/localaid.yaml:1: control character #x007f is not allowed in YAML"),
], ids=["nul", "utf-16", "truncated-utf-8", "elf"])
def test_bad_bytes(tmp_path, data, expected):
    assert _errors(tmp_path, data) == [expected]


def test_fifo_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: it must not even be opened."""
    os.mkfifo(tmp_path / "localaid.yaml")
    (tmp_path / "conf.d").mkdir()
    os.mkfifo(tmp_path / "conf.d" / "10-pipe.yaml")

    def hung(signum, frame):
        raise AssertionError("load() blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        assert _errors(tmp_path) == ["@/localaid.yaml: is a FIFO, expected a YAML file",
                                     "@/conf.d/10-pipe.yaml: is a FIFO, expected a YAML file"]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_device_is_refused():
    with pytest.raises(ConfigError) as info:
        load("/dev/zero", None)
    assert str(info.value) == "/dev/zero: is a device, expected a YAML file"


def test_directory_as_main_file_and_in_conf_d(tmp_path):
    (tmp_path / "localaid.yaml").mkdir()
    (tmp_path / "conf.d" / "10.yaml").mkdir(parents=True)
    assert _errors(tmp_path) == ["@/localaid.yaml: is a directory, expected a YAML file",
                                 "@/conf.d/10.yaml: is a directory, expected a YAML file"]


@pytest.mark.parametrize("text, expected", [
    ("health:\n  failures: " + "9" * 5000,          # past Python's int-from-text limit
     "health.failures: must be between 1 and 20, got " + "9" * 57 + "..."),
    ("health:\n  interval: " + "9" * 5000 + "s",
     'health.interval: expected a duration such as "2s", got "' + "9" * 57 + '..."'),
    ("ollama:\n  keep_alive: " + "9" * 20 + "d",     # Go's time.Duration ends at about 292 years
     'ollama.keep_alive: longer than Ollama can count, got "' + "9" * 20 + 'd" '
     "(write forever to keep models loaded indefinitely)"),
], ids=["huge-integer", "huge-duration", "keep-alive-past-go"])
def test_huge_numbers(tmp_path, text, expected):
    assert _errors(tmp_path, text + "\n") == ["@/localaid.yaml:2: " + expected]


# ------------------------------------------------------------------ every key, every odd value

NASTY = [
    "9" * 5000, "-" + "9" * 5000, "1" + "0" * 400 + "s", "1" + "0" * 400 + "GiB", "9" * 99 + "d", "1e999",
    "1.5e308", ".inf", "-.inf", ".nan", "0x" + "f" * 5000, "0o777", "1:30", "-0", "+5", "1_000",
    "'" + "x" * 100_000 + "'", '"a\\nb"', '"\\0"', '"\\u2028"', '"\\uffff"', "''", "~", "-1",
    "[" + "1, " * 1000 + "]", "[[1]]", "{a: {b: c}}", "{? [a]: 1}", "!!binary aGVsbG8=",
    "!!python/object/apply:os.system [true]", "!!set {a, b}", "!!timestamp 2001-12-14", "2001-12-14",
    "!custom x", "&anchor x", "!!str 5", "!!int '5'", "!!float x", "!!bool maybe",
    "forever", "true", "off", "\U0001F600", "[::1]:99999", "http://[::1", "https://h:99999/", "/" * 5000,
]


def _nest(path: str, value: str) -> str:
    parts = path.split(".")
    lines = [" " * 2 * i + p + ":" for i, p in enumerate(parts[:-1])]
    return "\n".join(lines + [" " * 2 * (len(parts) - 1) + f"{parts[-1]}: {value}"]) + "\n"


@pytest.mark.parametrize("value", NASTY, ids=range(len(NASTY)))
def test_every_key_takes_any_value_without_crashing(tmp_path, value):
    from localaid.config import declared_keys
    f = tmp_path / "localaid.yaml"
    docs = [_nest(path, value) for path in declared_keys()]
    docs += [f"ollama:\n  models:\n    - name: {value}\n      keep_warm: {value}\n",
             f"ollama:\n  environment:\n    A: {value}\n", f"webui:\n  environment: {{{value}: 1}}\n"]
    for doc in docs:
        f.write_text(doc)
        try:
            load(str(f), None)
        except ConfigError as e:
            assert e.errors and all(str(p).startswith(str(f)) and len(str(p)) < 1000 for p in e.errors), doc[:200]
