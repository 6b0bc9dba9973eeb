"""One codec: every JSON and YAML document is read with the same strictness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.cli import main as cli_main
from klockproxy.core import codec
from klockproxy.core.codec import (
    DEFAULT_YAML_PARSER,
    MalformedDocument,
    StreamedMapping,
    iter_yaml_documents_streaming,
    load_document,
    load_json,
    load_yaml_documents,
)
from klockproxy.core.errors import DecodeError, LockValidationError, PatchError
from klockproxy.core.locks import load_locks_from_path
from klockproxy.core.patches import apply_patch

LOCK = """apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: l, namespace: default}
spec:
  operations: [UPDATE]
  matcher: {aura: red}
"""


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [('{"a": 1,\n  "b": }', 2, 8), ("[1, 2", 1, 6)],
)
def test_malformed_json_says_where(text: str, line: int, column: int) -> None:
    with pytest.raises(MalformedDocument) as info:
        load_json(text.encode())
    assert (info.value.language, info.value.line, info.value.column) == ("JSON", line, column)
    assert f"at line {line}, column {column}" in str(info.value)


def test_malformed_yaml_says_where() -> None:
    with pytest.raises(MalformedDocument) as info:
        load_yaml_documents("a: 1\nb: [\n")
    assert info.value.language == "YAML" and info.value.line == 3


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"a": 1, "a": 2}', "application/json"),
        (b'{"a": 1, "a": 2}', "application/merge-patch+json"),
        (b"a: 1\na: 2\n", "application/yaml"),
        (b"base: &b {x: 1}\nm:\n  <<: *b\n", "application/apply-patch+yaml"),
        (b'{"a": NaN}', "application/json"),
    ],
)
def test_ambiguous_documents_are_refused_for_every_type(body: bytes, ctype: str) -> None:
    with pytest.raises(DecodeError):
        load_document(body, ctype)


def test_patches_refuse_duplicate_keys_like_bodies() -> None:
    # Go merges duplicate keys of a merge patch; Python keeps the last: ambiguous, refused.
    patch = b'{"metadata":{"labels":{"aura":"red"},"labels":{}}}'
    with pytest.raises(PatchError, match="duplicate key"):
        apply_patch({"metadata": {}}, patch, "application/merge-patch+json")


def test_lock_files_refuse_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "locks.yaml"
    path.write_text(LOCK.replace("matcher: {aura: red}", "matcher: {aura: red, aura: blue}"))
    with pytest.raises(LockValidationError, match="duplicate key"):
        load_locks_from_path(path)


def test_check_manifests_refuse_duplicate_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locks = tmp_path / "locks.yaml"
    locks.write_text(LOCK)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {aura: red}\n  labels: {}\n"
    )
    code = cli_main(
        [
            "check",
            "--locks",
            str(locks),
            "--as",
            "bob",
            "--operation",
            "UPDATE",
            "-f",
            str(manifest),
        ]
    )
    assert code == 2
    assert "duplicate key" in capsys.readouterr().err


def test_unsupported_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unsupported content type"):
        load_document(b"x", "text/plain")


# ---------------------------------------------------------------------------------------------
# YAML on libyaml (PyYAML's C parser), with the strictness of the pure-Python one.


def test_yaml_is_parsed_by_libyaml() -> None:
    assert yaml.__with_libyaml__, "PyYAML without libyaml: lock files load ~7x slower"
    assert DEFAULT_YAML_PARSER == "libyaml"


@pytest.mark.parametrize("parser", ["libyaml", "python"])
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("metadata:\n  labels:\n    aura: red\n    aura: blue\n", "duplicate key 'aura'"),
        ("{a: 1, b: 2, a: 3}\n", "duplicate key 'a'"),
        ("base: &b {aura: red}\nlabels:\n  <<: *b\n", "merge keys"),
        ("labels: {aura: blue, <<: {aura: red}}\n", "merge keys"),
        ("- a: 1\n---\nb: 1\nb: 2\n", "duplicate key 'b'"),
    ],
)
def test_both_yaml_parsers_refuse_duplicate_and_merge_keys(
    parser: str, text: str, problem: str
) -> None:
    with pytest.raises(MalformedDocument, match=problem):
        load_yaml_documents(text, parser=parser)


# Documents whose reading depends on the parser's details: scalars YAML 1.1 resolves
# (booleans, octal, dates kept as strings), anchors, block styles, flow styles, comments,
# several documents, explicit tags, and malformed ones (both must refuse).
CORPUS = [
    "a: yes\nb: No\nc: on\nd: ~\ne: 0o17\nf: 017\ng: 0x1F\nh: 1_000\ni: .inf\nj: 2024-01-01\n",
    "a: &x [1, 2, {b: c}]\nd: *x\n",
    "text: |\n  line one\n  line two\nfolded: >-\n  a\n  b\n",
    '{"flow": [1, "two", {"three": 3.0}], "empty": {}, "null": null}\n',
    "# comment only\n",
    "",
    "---\n---\na: 1\n...\n---\n- x\n",
    "a: !!str 1\nb: !!int '2'\n",
    "key with spaces: 'single ''quoted'''\nunicode: \"caf\\u00e9 \\U0001F600\"\n",
    "a: 1\n b: 2\n",
    "a: [1, 2\n",
    "a: !!python/object:os.system ls\n",
    "? [complex, key]\n: value\n",
    "\ufeffa: bom\n",
    'a: "\\x41\\t\\n"\n',
    "- &a 1\n- *b\n",
    "a: @reserved\n",
]


# Where the two differ, libyaml reads the text as go-yaml (the API server's YAML parser, a
# port of libyaml) does; the pure-Python parser refuses it.
LIBYAML_LIKE_GO = [
    ('a: "\\ud83d\\ude00"\n', None),  # a surrogate escape: refused by libyaml and go-yaml
    ("a: 1\t# a tab before a comment\n", [{"a": 1}]),
]


@pytest.mark.parametrize(("text", "expected"), LIBYAML_LIKE_GO)
def test_where_the_parsers_differ_libyaml_reads_as_go_yaml(
    text: str, expected: list[Any] | None
) -> None:
    libyaml, python = _both(text)
    assert libyaml == (("ok", expected) if expected is not None else ("refused", None))
    assert python != libyaml


def _both(text: str) -> list[Any]:
    results: list[Any] = []
    for parser in ("libyaml", "python"):
        try:
            results.append(("ok", load_yaml_documents(text, parser=parser)))
        except DecodeError:
            results.append(("refused", None))
    return results


@pytest.mark.parametrize("text", CORPUS)
def test_both_yaml_parsers_agree_on_a_corpus(text: str) -> None:
    libyaml, python = _both(text)
    assert libyaml == python


def test_both_yaml_parsers_agree_on_the_lock_files_of_the_tests() -> None:
    data = Path(__file__).resolve().parent.parent / "data"
    files = sorted(data.rglob("*.yaml")) + sorted(data.rglob("*.yml"))
    assert files
    for path in files:
        libyaml, python = _both(path.read_text(encoding="utf-8"))
        assert libyaml == python, path.name


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(value=_json_values, flow=st.sampled_from([None, True, False]))
def test_both_yaml_parsers_agree_on_what_pyyaml_writes(value: Any, flow: bool | None) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
    libyaml, python = _both(text)
    assert libyaml == python


def _streamed_in_full(text: str, parser: str) -> list[Any]:
    out: list[Any] = []
    for doc in iter_yaml_documents_streaming(text, parser=parser):
        if isinstance(doc, StreamedMapping):
            items = list(doc.items)
            head = dict(doc.head)
            if doc.has_items:
                head["items"] = items
            out.append(head)
        else:
            out.append(doc)
    return out


@pytest.mark.parametrize("parser", ["libyaml", "python"])
@pytest.mark.parametrize(
    "text",
    [
        *CORPUS,
        "kind: List\nitems:\n- a: 1\n- b: [1, 2]\napiVersion: v1\n",
        "{items: [1, {a: b}], k: v}\n",
        "items: 5\nkind: x\n",
        "a: &A {b: 1}\nitems:\n- *A\n- c\n",
    ],
)
def test_streamed_documents_read_as_whole_ones(parser: str, text: str) -> None:
    try:
        whole: Any = load_yaml_documents(text, parser=parser)
    except DecodeError:
        whole = "refused"
    try:
        streamed: Any = _streamed_in_full(text, parser)
    except DecodeError:
        streamed = "refused"
    assert streamed == whole


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("items: [1]\nitems: [2]\n", "duplicate key 'items'"),
        ("base: &b {x: 1}\n<<: *b\nitems: [1]\n", "merge keys"),
        ("items:\n- a: 1\n  a: 2\n", "duplicate key 'a'"),
        # An alias of the streamed sequence: it was never built whole, so it is refused.
        ("items: &x [1]\nother: *x\n", "undefined alias"),
    ],
)
def test_streamed_documents_keep_the_refusals(text: str, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        _streamed_in_full(text, "libyaml")


def test_streamed_items_are_read_one_at_a_time() -> None:
    # The second item is malformed: the first is handed out before that is found.
    docs = iter_yaml_documents_streaming("kind: List\nitems:\n- {a: 1}\n- {a: [}\n")
    doc = next(docs)
    assert isinstance(doc, StreamedMapping)
    assert next(doc.items) == {"a": 1}
    with pytest.raises(MalformedDocument):
        next(doc.items)


def _outcome(text: str, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What streaming ``text`` gives: the documents, or the exact error (its text)."""
    monkeypatch.setattr(codec, "_FAST_EVENTS", fast)
    try:
        return ("ok", _streamed_in_full(text, "libyaml"))
    except DecodeError as e:
        return ("refused", type(e).__name__, str(e))


_UNUSUAL = [
    *CORPUS,
    "a: &x {b: &x 1}\n",  # an anchor defined twice inside itself
    "a: &x [1, *x]\n",  # an alias inside its own anchor
    "a: &x 1\nb: &x 2\n",
    "a: &x {k: v}\nb: *x\nc: *x\nitems:\n- *x\n- &y [1]\n- *y\n",
    "kind: List\nitems:\n- &i {a: 1}\n- *i\n- {<<: *i}\n",
    "kind: List\nitems:\n- {a: 1, a: 2}\n- [}\n",
    "kind: List\nitems:\n- {a: 1}\n- {b: 1, b: 2}\n- {c: [\n",
    "a: {b: 1, b: 2\n",  # a duplicate key, then a syntax error: which is reported
    "a: {b: 1}\n<<: {c: 2}\n",
    "? [a, b]\n: c\n",
    "1: a\n",
    "a: = \n",
    "a: !foo x\n",
    "a: &x !!str 1\nb: *x\n",
    "items: &s [1, 2]\nkind: List\n",
    "items: *undefined\n",
    "- " * 200 + "x\n",
    "a: " + "[" * 300 + "]" * 300 + "\n",
    'a: "\\ud83d\\ude00"\nb: "\\ud83d"\n',
    "a: .nan\n",
    "a: 2001-12-14t21:59:43.10-05:00\n",
    "lol: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"l{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)),
]


@pytest.mark.parametrize("text", _UNUSUAL)
def test_fast_yaml_reading_gives_what_the_composer_gives(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock files are read from libyaml's events without composing nodes where that is
    plain; anything else (and every error) must come out exactly as the composer has it."""
    assert _outcome(text, True, monkeypatch) == _outcome(text, False, monkeypatch)


_FRAGMENTS = [
    "a",
    "b",
    "items",
    "kind",
    "List",
    ": ",
    "- ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "&x ",
    "&y ",
    "*x",
    "*y",
    "<<",
    "!!str ",
    "1",
    "'q'",
    '"\\ud83d"',
    "null",
    "yes",
    "---\n",
    "? ",
    "#",
]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(_FRAGMENTS), max_size=30),
    value=_json_values,
)
def test_fast_yaml_reading_agrees_on_random_texts(parts: list[str], value: Any) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        for text in ("".join(parts), yaml.safe_dump({"items": [value, value], "k": value})):
            assert _outcome(text, True, monkeypatch) == _outcome(text, False, monkeypatch)
