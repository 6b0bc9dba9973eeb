"""One codec: every JSON and YAML document is read with the same strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from klockproxy.cli import main as cli_main
from klockproxy.core.codec import (
    MalformedDocument,
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
