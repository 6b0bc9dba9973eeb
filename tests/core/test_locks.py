"""The Lock loader/validator: every accepted shape, every kind of error, with its message."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from klockproxy.core.errors import LockValidationError
from klockproxy.core.locks import (
    Lock,
    is_valid_label_key,
    load_locks_from_objects,
    load_locks_from_path,
    load_locks_from_text,
    lock_file_steps,
    lock_from_object,
)
from klockproxy.core.types import Operation

DATA = Path(__file__).resolve().parents[1] / "data" / "locks"


def lock_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": "lockred", "namespace": "default"},
        "spec": spec or {"operations": ["UPDATE"], "matcher": {"aura": "red"}},
    }


def error_of(obj: object, source: str = "test") -> LockValidationError:
    with pytest.raises(LockValidationError) as info:
        load_locks_from_objects([obj], source=source)
    return info.value


# --- loading -----------------------------------------------------------------------------


def test_seed_lock_file() -> None:
    (lock,) = load_locks_from_path(DATA / "seed" / "lockred.yaml")
    assert lock.key == "default/lockred"
    assert lock.operations == {Operation.UPDATE, Operation.DELETE}
    assert [(k, e.source) for k, e in lock.matcher] == [("aura", "red")]
    assert lock.exclusive_name == "jonny-op"
    assert lock.exclusive_uid is None
    assert lock.matcher_text() == "map[aura:red]"


def test_default_namespace_is_overridable() -> None:
    (lock,) = load_locks_from_path(DATA / "seed" / "lockred.yaml", default_namespace="prod")
    assert lock.key == "prod/lockred"


def test_directory_of_yaml_yml_json_files() -> None:
    locks = load_locks_from_path(DATA / "multi")
    assert [lock.key for lock in locks] == [
        "team-a/locksmith",
        "team-a/knight",
        "default/freeze",
        "team-b/elements",
    ]
    by_key = {lock.key: lock for lock in locks}
    assert by_key["team-a/locksmith"].operations == {Operation.DELETE}
    assert by_key["team-a/knight"].operations == {Operation.UPDATE}
    assert by_key["default/freeze"].matcher == ()
    assert by_key["default/freeze"].matcher_text() == "map[]"
    assert len(by_key["default/freeze"].operations) == 4
    elements = by_key["team-b/elements"]
    assert elements.matcher_text() == "map[aura:red element:^wind]"
    assert elements.exclusive_name == "system:serviceaccount:ops:keeper"
    assert elements.exclusive_uid == "u-1"


def test_operations_any_case_normalised() -> None:
    (lock,) = load_locks_from_objects(
        [lock_doc(operations=["create", "Update", "DELETE", "connect", "delete"])], source="t"
    )
    assert lock.operations == set(Operation)


def test_matcher_sorted_and_go_map_printed() -> None:
    (lock,) = load_locks_from_objects(
        [lock_doc(operations=["DELETE"], matcher={"zeta": "z", "app.kubernetes.io/name": "x|y"})],
        source="t",
    )
    assert lock.matcher_text() == "map[app.kubernetes.io/name:x|y zeta:z]"


def test_empty_exclusive_values_mean_nobody() -> None:
    (lock,) = load_locks_from_objects(
        [lock_doc(operations=["DELETE"], exclusive={"name": "", "uid": None})], source="t"
    )
    assert not lock.has_exclusive


def test_empty_and_null_documents_are_skipped() -> None:
    text = "---\n---\n# only a comment\n---\n"
    assert load_locks_from_text(text, source="empty.yaml") == []


def test_lock_list_without_items_is_empty() -> None:
    assert load_locks_from_objects([{"kind": "LockList", "apiVersion": "x"}], source="t") == []


def test_lock_from_object_takes_namespace_and_uid_from_metadata() -> None:
    obj = lock_doc()
    obj["metadata"] = {
        "name": "lockred",
        "namespace": "shop",
        "uid": "1234-abcd",
        "resourceVersion": "42",
        "labels": {"aura": "red"},
        "managedFields": [{"manager": "kubectl"}],
    }
    lock = lock_from_object(obj, source="cluster")
    assert lock.key == "shop/lockred"
    assert lock.uid == "1234-abcd"


def test_lock_from_object_tolerates_missing_type_and_a_status() -> None:
    obj = lock_doc()
    del obj["apiVersion"], obj["kind"]
    obj["status"] = {}
    assert lock_from_object(obj, source="cluster").key == "default/lockred"
    obj["kind"] = "ConfigMap"
    with pytest.raises(LockValidationError, match="kind must be 'Lock'"):
        lock_from_object(obj, source="cluster")


def test_lock_from_object_requires_a_namespace() -> None:
    obj = lock_doc()
    del obj["metadata"]["namespace"]
    with pytest.raises(LockValidationError) as info:
        lock_from_object(obj, source="cluster")
    assert str(info.value) == (
        "cluster, lock /lockred, field metadata.namespace: metadata.namespace is required"
    )


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("aura", True),
        ("app.kubernetes.io/name", True),
        ("A-b_c.D9", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("-aura", False),
        ("aura-", False),
        ("", False),
        ("/aura", False),
        ("Example.com/aura", False),
        ("a/b/c", False),
        ("example.com/", False),
        ("has space", False),
    ],
)
def test_label_keys(key: str, valid: bool) -> None:
    assert is_valid_label_key(key) is valid


# --- errors: each kind, with the message a user sees -------------------------------------


def test_unknown_operation_in_file_names_everything() -> None:
    with pytest.raises(LockValidationError) as info:
        load_locks_from_path(DATA / "bad" / "unknown-operation.yaml")
    err = info.value
    assert err.source is not None and err.source.endswith("unknown-operation.yaml")
    assert (err.document, err.lock, err.field) == (0, "default/typo", "spec.operations[1]")
    assert str(err).endswith(
        "document 0, lock default/typo, field spec.operations[1]: unknown operation 'DELTE' "
        "(expected one of CREATE, UPDATE, DELETE, CONNECT)"
    )


def test_malformed_yaml_names_line_never_crashes() -> None:
    with pytest.raises(LockValidationError) as info:
        load_locks_from_path(DATA / "bad" / "malformed.yaml")
    assert "malformed YAML at line 7" in str(info.value)
    assert info.value.source is not None and info.value.source.endswith("malformed.yaml")


def test_malformed_json_names_line() -> None:
    with pytest.raises(LockValidationError, match=r"malformed JSON at line 1, column 2"):
        load_locks_from_text_or_json("{oops", suffix=".json")


def load_locks_from_text_or_json(text: str, *, suffix: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"locks{suffix}"
        path.write_text(text)
        load_locks_from_path(path)


def test_deeply_nested_yaml_is_an_error_not_a_crash() -> None:
    with pytest.raises(LockValidationError, match="malformed YAML"):
        load_locks_from_text("[" * 5000, source="deep.yaml")


def test_missing_path() -> None:
    with pytest.raises(LockValidationError, match="no such file or directory"):
        load_locks_from_path(DATA / "does-not-exist")


def test_non_utf8_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LockValidationError, match="cannot read"):
        load_locks_from_path(bad)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d.update(apiVersion="klock.rnemet.dev/v2"), "apiVersion", "apiVersion must be"),
        (lambda d: d.update(kind="Lok"), "kind", "kind must be 'Lock', got 'Lok'"),
        (lambda d: d.update(spce={}), "spce", "unknown field 'spce'"),
        (lambda d: d.update(metadata=[]), "metadata", "metadata must be a mapping, got list"),
        (lambda d: d["metadata"].pop("name"), "metadata.name", "metadata.name is required"),
        (lambda d: d["metadata"].update(name="Lock_Red"), "metadata.name", "invalid name"),
        (lambda d: d["metadata"].update(namespace="Prod"), "metadata.namespace", "DNS label"),
        (lambda d: d["metadata"].update(namespace=3), "metadata.namespace", "must be a string"),
        (lambda d: d.pop("spec"), "spec", "spec must be a mapping, got null"),
        (
            lambda d: d["spec"].update(exclusiv={"name": "x"}),
            "spec.exclusiv",
            "unknown field 'exclusiv'",
        ),
        (lambda d: d["spec"].pop("operations"), "spec.operations", "must be a list"),
        (lambda d: d["spec"].update(operations=[]), "spec.operations", "would forbid nothing"),
        (lambda d: d["spec"].update(operations="UPDATE"), "spec.operations", "got string"),
        (lambda d: d["spec"].update(operations=[1]), "spec.operations[0]", "must be a string"),
        (lambda d: d["spec"].update(operations=["GET"]), "spec.operations[0]", "'GET'"),
        (lambda d: d["spec"].update(matcher=["aura"]), "spec.matcher", "got list"),
        (
            lambda d: d["spec"].update(matcher={"bad key": "x"}),
            "spec.matcher.bad key",
            "invalid label key 'bad key'",
        ),
        (
            lambda d: d["spec"].update(matcher={"aura": 7}),
            "spec.matcher.aura",
            "the expression must be a string, got number 7 (quote it in YAML)",
        ),
        (
            lambda d: d["spec"].update(matcher={"aura": ""}),
            "spec.matcher.aura",
            "invalid expression '' at position 0: empty expression",
        ),
        (
            lambda d: d["spec"].update(matcher={"aura": "(red|blue"}),
            "spec.matcher.aura",
            "invalid expression '(red|blue' at position 0: unbalanced '('",
        ),
        (
            lambda d: d["spec"].update(exclusive="jonny-op"),
            "spec.exclusive",
            "must be a mapping with name and/or uid",
        ),
        (
            lambda d: d["spec"].update(exclusive={"nmae": "jonny-op"}),
            "spec.exclusive.nmae",
            "unknown field 'nmae'",
        ),
        (
            lambda d: d["spec"].update(exclusive={"uid": 1000}),
            "spec.exclusive.uid",
            "spec.exclusive.uid must be a string, got number",
        ),
    ],
)
def test_each_kind_of_invalid_lock(mutate: Any, field: str, reason: str) -> None:
    doc = lock_doc()
    mutate(doc)
    err = error_of(doc, source="locks.yaml")
    assert err.field == field
    assert err.source == "locks.yaml"
    assert err.document == 0
    assert reason in err.reason
    assert f"field {field}: " in str(err)


def test_error_names_lock_even_for_header_errors() -> None:
    doc = lock_doc()
    doc["kind"] = "ConfigMap"
    assert error_of(doc).lock == "default/lockred"


def test_not_a_mapping() -> None:
    err = error_of(["a", "list"])
    assert str(err) == "test, document 0: a Lock must be a mapping, got list"


def test_errors_inside_a_list_name_the_item() -> None:
    bad = lock_doc(operations=["UPDATE"], matcher={"aura": "red||blue"})
    listing = {"apiVersion": "klock.rnemet.dev/v1", "kind": "LockList", "items": [lock_doc(), bad]}
    # Same name twice would be a duplicate; rename the bad one.
    bad["metadata"]["name"] = "second"
    with pytest.raises(LockValidationError) as info:
        load_locks_from_objects([None, listing], source="list.yaml")
    err = info.value
    assert (err.document, err.lock, err.field) == (
        1,
        "default/second",
        "items[1].spec.matcher.aura",
    )
    assert "doubled operator '||'" in str(err)


def test_items_must_be_a_list() -> None:
    err = error_of({"kind": "List", "apiVersion": "v1", "items": {"a": 1}})
    assert err.field == "items"


def test_duplicate_locks_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(LockValidationError, match=r"duplicate lock default/lockred"):
        load_locks_from_objects([lock_doc(), lock_doc()], source="t")
    text = (DATA / "seed" / "lockred.yaml").read_text()
    (tmp_path / "one.yaml").write_text(text)
    (tmp_path / "two.yaml").write_text(text)
    with pytest.raises(LockValidationError, match=r"also defined in .*one\.yaml"):
        load_locks_from_path(tmp_path)


def test_yaml_text_document_index_counts_empty_documents() -> None:
    text = textwrap.dedent(
        """\
        ---
        ---
        apiVersion: klock.rnemet.dev/v1
        kind: Lock
        metadata: {name: x}
        spec: {operations: [UPDATE], matcher: {aura: "red&"}}
        """
    )
    with pytest.raises(LockValidationError) as info:
        load_locks_from_text(text, source="s.yaml")
    assert str(info.value) == (
        "s.yaml, document 1, lock default/x, field spec.matcher.aura: invalid expression "
        "'red&' at position 3: dangling operator '&' (no operand after it)"
    )


def test_a_lock_file_that_defines_no_lock_must_say_so(tmp_path: Path) -> None:
    """An empty file is more often a file being rewritten than a wish to unlock everything."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    with pytest.raises(LockValidationError, match="defines no Lock") as info:
        load_locks_from_path(empty)
    assert info.value.source == str(empty)
    said = tmp_path / "said.yaml"
    said.write_text("# no locks\n")
    assert load_locks_from_path(said) == []
    listed = tmp_path / "listed.json"
    listed.write_text('{"apiVersion": "v1", "kind": "List", "items": []}')
    assert load_locks_from_path(listed) == []
    # A directory without files has no locks: nothing was cut short.
    (tmp_path / "none").mkdir()
    assert load_locks_from_path(tmp_path / "none") == []


def test_lock_file_steps_yield_between_documents() -> None:
    text = "---\n".join(
        f"apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {{name: l{i}}}\n"
        "spec: {operations: [DELETE]}\n"
        for i in range(3)
    )
    steps = lock_file_steps(text, source="t.yaml")
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            locks = done.value
            break
        count += 1
    assert count >= 3
    assert [lock.name for lock in locks] == ["l0", "l1", "l2"]


def test_a_lock_list_file_is_validated_item_by_item() -> None:
    """A ``kind: List`` of thousands (kubectl get -o yaml) is read in steps too, with
    ``kind`` after ``items`` as kubectl and PyYAML write it."""
    items = "".join(
        f"- apiVersion: klock.rnemet.dev/v1\n  kind: Lock\n  metadata: {{name: l{i}}}\n"
        "  spec: {operations: [DELETE]}\n"
        for i in range(100)
    )
    steps = lock_file_steps(f"apiVersion: v1\nitems:\n{items}kind: List\n", source="t.yaml")
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            locks = done.value
            break
        count += 1
    assert count >= 100 // 16
    assert [lock.name for lock in locks] == [f"l{i}" for i in range(100)]
    # ``items`` in anything but a list is still an unknown field.
    lock = "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: a}\n"
    with pytest.raises(LockValidationError, match="unknown field 'items'"):
        load_locks_from_text_file(lock + "spec: {operations: [DELETE]}\nitems: []\n")


def load_locks_from_text_file(text: str) -> list[Lock]:
    steps = lock_file_steps(text, source="t.yaml")
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return list(done.value)
