"""``klockproxy check``: driven through the CLI front door, and once as the installed script."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from klockproxy.check import resource_for_kind
from klockproxy.cli import main

DATA = Path(__file__).parent / "data" / "locks"
SEED_LOCKS = str(DATA / "seed")
SEED_OBJECTS = str(DATA / "objects" / "seed.yaml")
JONNY = "system:serviceaccount:default:jonny-op"
LOCKRED_DENIAL = (
    "denied, there is a lock: map[aura:red] (Lock default/lockred forbids {op} of {res} "
    '"{name}"; only jonny-op may)'
)


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def lock_text(name: str, operations: str, matcher: str, extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        apiVersion: klock.rnemet.dev/v1
        kind: Lock
        metadata:
          name: {name}
        spec:
          operations: {operations}
          matcher: {matcher}
        """
        )
        + extra
    )


# --- the seed scenario -------------------------------------------------------------------


def test_admin_update_of_the_app_is_denied(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = check(
        capsys, "--locks", SEED_LOCKS, "--as", "admin", "--operation", "UPDATE", "-f", SEED_OBJECTS
    )
    assert code == 1
    assert err == ""
    assert lines == [
        "denied pod/my-pod: " + LOCKRED_DENIAL.format(op="UPDATE", res="pods", name="my-pod"),
        "denied configmap/my-cm: "
        + LOCKRED_DENIAL.format(op="UPDATE", res="configmaps", name="my-cm"),
        "allowed pod/other-pod",
    ]


def test_jonny_may_delete_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = check(
        capsys, "--locks", SEED_LOCKS, "--as", JONNY, "--operation", "delete", "-f", SEED_OBJECTS
    )
    assert code == 0
    assert lines == ["allowed pod/my-pod", "allowed configmap/my-cm", "allowed pod/other-pod"]


def test_jonny_of_another_namespace_is_not_exempt(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = check(
        capsys,
        "--locks",
        SEED_LOCKS,
        "--as",
        "system:serviceaccount:kube-system:jonny-op",
        "--operation",
        "DELETE",
        "-f",
        SEED_OBJECTS,
    )
    assert code == 1
    assert lines[0].startswith("denied pod/my-pod: denied, there is a lock: map[aura:red]")


def test_create_is_not_locked_by_lockred(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = check(
        capsys, "--locks", SEED_LOCKS, "--as", "admin", "--operation", "CREATE", "-f", SEED_OBJECTS
    )
    assert code == 0
    assert len(lines) == 3


def test_update_with_old_objects_judges_new_labels_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines, _ = check(
        capsys,
        "--locks",
        SEED_LOCKS,
        "--as",
        "admin",
        "--operation",
        "UPDATE",
        "-f",
        str(DATA / "objects" / "other-pod-relabelled.yaml"),
        "--old",
        SEED_OBJECTS,
    )
    assert code == 1
    assert lines == [
        "denied pod/other-pod: " + LOCKRED_DENIAL.format(op="UPDATE", res="pods", name="other-pod")
    ]


def test_namespace_flag_applies_to_objects_and_locks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    locks = write(tmp_path, "lock.yaml", lock_text("freeze", "[DELETE]", "{}"))
    objs = write(
        tmp_path,
        "objs.yaml",
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: b, namespace: elsewhere}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: prod}
        """,
    )
    code, lines, _ = check(
        capsys, "--locks", locks, "--as", "u", "--operation", "DELETE", "-f", objs, "-n", "prod"
    )
    assert code == 1
    assert lines == [
        "denied configmap/a: denied, there is a lock: map[] (Lock prod/freeze forbids DELETE of "
        'configmaps "a"; nobody is exempt)',
        "allowed configmap/b",
        "allowed namespace/prod",
    ]


def test_lists_groups_several_lock_paths_and_uid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uid_lock = write(
        tmp_path,
        "uid.yaml",
        lock_text("by-uid", "[UPDATE]", "{tier: web}", "  exclusive: {uid: u-42}\n"),
    )
    objs = write(
        tmp_path,
        "list.yaml",
        """\
        apiVersion: v1
        kind: List
        items:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web, labels: {tier: web, aura: red}}
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: deny-all}
        """,
    )
    base = ["--locks", SEED_LOCKS, "--locks", uid_lock, "--operation", "UPDATE", "-f", objs]
    code, lines, _ = check(capsys, *base, "--as", "admin")
    assert code == 1
    assert lines[0] == (
        "denied deployment.apps/web: denied, there is a lock: map[tier:web] (Lock default/by-uid "
        'forbids UPDATE of deployments.apps "web"; only the user with uid u-42 may), and a lock: '
        'map[aura:red] (Lock default/lockred forbids UPDATE of deployments.apps "web"; only '
        "jonny-op may)"
    )
    assert lines[1] == "allowed networkpolicy.networking.k8s.io/deny-all"
    code, lines, _ = check(capsys, *base, "--as", JONNY, "--as-uid", "u-42", "--as-group", "g")
    assert code == 0


def test_lock_objects_are_never_locked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    locks = write(tmp_path, "freeze.yaml", lock_text("freeze", "[DELETE]", "{}"))
    code, lines, _ = check(
        capsys, "--locks", locks, "--as", "u", "--operation", "DELETE", "-f", locks
    )
    assert (code, lines) == (0, ["allowed lock.klock.rnemet.dev/freeze"])


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(Path(SEED_OBJECTS).read_text()))
    code, lines, _ = check(
        capsys, "--locks", SEED_LOCKS, "--as", "admin", "--operation", "CONNECT", "-f", "-"
    )
    assert code == 0 and len(lines) == 3


# --- bad input: exit 2, reason on stderr -------------------------------------------------


def test_invalid_lock_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = check(
        capsys,
        "--locks",
        str(DATA / "bad" / "unknown-operation.yaml"),
        "--as",
        "admin",
        "--operation",
        "DELETE",
        "-f",
        SEED_OBJECTS,
    )
    assert code == 2
    assert lines == []
    assert err.startswith("klockproxy check: ")
    assert "lock default/typo, field spec.operations[1]: unknown operation 'DELTE'" in err


def test_unreadable_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = check(
        capsys,
        "--locks",
        SEED_LOCKS,
        "--as",
        "a",
        "--operation",
        "DELETE",
        "-f",
        str(tmp_path / "nope.yaml"),
    )
    assert code == 2
    assert "nope.yaml: cannot read" in err


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind: Pod\nmetadata: {name: x}\n", "document 0: apiVersion is required"),
        ("apiVersion: v1\nmetadata: {name: x}\n", "kind is required"),
        ("apiVersion: v1\nkind: Pod\n", "Pod has no metadata"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {}}\n", "Pod has no metadata.name"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {replicas: 3}}\n",
            "metadata.labels must map strings to strings",
        ),
        ("- just\n- a list\n", "an object must be a mapping, got list"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n", "malformed YAML at line 4"),
        ("apiVersion: v1\nkind: List\nitems: 3\n", "items must be a list"),
    ],
)
def test_invalid_manifests(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, reason: str
) -> None:
    objs = write(tmp_path, "objs.yaml", text)
    code, lines, err = check(
        capsys, "--locks", SEED_LOCKS, "--as", "a", "--operation", "UPDATE", "-f", objs
    )
    assert code == 2
    assert lines == []
    assert reason in err, err


def test_old_only_for_update(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(
        capsys,
        "--locks",
        SEED_LOCKS,
        "--as",
        "a",
        "--operation",
        "DELETE",
        "-f",
        SEED_OBJECTS,
        "--old",
        SEED_OBJECTS,
    )
    assert code == 2
    assert "--old only applies to --operation UPDATE" in err


def test_duplicate_locks_across_paths(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(
        capsys,
        "--locks",
        SEED_LOCKS,
        "--locks",
        SEED_LOCKS,
        "--as",
        "a",
        "--operation",
        "DELETE",
        "-f",
        SEED_OBJECTS,
    )
    assert code == 2
    assert "duplicate lock default/lockred" in err


def test_bad_operation_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--locks", SEED_LOCKS, "--as", "a", "--operation", "GET", "-f", "x"])
    assert info.value.code == 2
    assert "invalid choice: 'GET'" in capsys.readouterr().err


def test_resource_for_kind() -> None:
    assert resource_for_kind("Pod") == "pods"
    assert resource_for_kind("Ingress") == "ingresses"
    assert resource_for_kind("NetworkPolicy") == "networkpolicies"
    assert resource_for_kind("Gateway") == "gateways"
    assert resource_for_kind("Lock") == "locks"
    assert resource_for_kind("Endpoints") == "endpoints"


# --- the installed console script --------------------------------------------------------


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "klockproxy"
    exe = str(script) if script.exists() else shutil.which("klockproxy")
    assert exe, "the klockproxy console script is not installed"
    argv = [exe, "check", "--locks", SEED_LOCKS, "--as", "admin", "--operation", "DELETE"]
    result = subprocess.run(
        [*argv, "-f", SEED_OBJECTS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "denied pod/my-pod: " + LOCKRED_DENIAL.format(op="DELETE", res="pods", name="my-pod"),
        "denied configmap/my-cm: "
        + LOCKRED_DENIAL.format(op="DELETE", res="configmaps", name="my-cm"),
        "allowed pod/other-pod",
    ]


# --- some of Klock's end-to-end cases as `klockproxy check` runs ------------------------


def pod(name: str, labels: dict[str, str]) -> str:
    rendered = ", ".join(f"{k}: {v}" for k, v in labels.items())
    return f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{rendered}}}}}\n"


@pytest.mark.parametrize(
    ("case", "matcher", "pods", "expected"),
    [
        (
            "06-negated",
            '{aura: "^(red|blue)"}',
            [("red", {"aura": "red"}), ("green", {"aura": "green"})],
            ["allowed pod/red", "denied pod/green"],
        ),
        (
            "07-two-keys",
            '{aura: red, element: "^wind"}',
            [
                ("wind", {"aura": "red", "element": "wind"}),
                ("fire", {"aura": "red", "element": "fire"}),
            ],
            ["allowed pod/wind", "denied pod/fire"],
        ),
        (
            "09-one-of-three",
            "{slayer: dragon}",
            [("a", {"slayer": "dragon"}), ("b", {"slayer": "knight"}), ("c", {})],
            ["denied pod/a", "allowed pod/b", "allowed pod/c"],
        ),
    ],
)
def test_klock_e2e_cases_as_check_runs(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    case: str,
    matcher: str,
    pods: list[tuple[str, dict[str, str]]],
    expected: list[str],
) -> None:
    locks = write(tmp_path, "lock.yaml", lock_text(case, "[DELETE]", matcher))
    objs = write(tmp_path, "pods.yaml", "---\n".join(pod(n, lb) for n, lb in pods))
    code, lines, _ = check(
        capsys, "--locks", locks, "--as", "admin", "--operation", "DELETE", "-f", objs, "-n", case
    )
    assert [line.split(":")[0] for line in lines] == expected
    assert code == (1 if any(e.startswith("denied") for e in expected) else 0)
    for line in lines:
        if line.startswith("denied"):
            assert ": denied, there is a lock: map[" in line
            assert f"(Lock {case}/{case} forbids DELETE of pods " in line


def test_klock_e2e_10_as_check_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    locks_dir = tmp_path / "locks"
    locks_dir.mkdir()
    write(locks_dir, "locksmith.yaml", lock_text("locksmith", "[DELETE]", "{dragon: black}"))
    write(locks_dir, "knight.yaml", lock_text("knight", "[UPDATE]", "{slayer: dragon}"))
    before = write(tmp_path, "before.yaml", pod("p", {"slayer": "knight"}))
    after = write(tmp_path, "after.yaml", pod("p", {"slayer": "knight", "dragon": "black"}))
    common = ["--locks", str(locks_dir), "--as", "admin"]
    code, lines, _ = check(capsys, *common, "--operation", "UPDATE", "-f", after, "--old", before)
    assert (code, lines) == (0, ["allowed pod/p"])
    code, lines, _ = check(capsys, *common, "--operation", "DELETE", "-f", after)
    assert code == 1
    assert lines == [
        "denied pod/p: denied, there is a lock: map[dragon:black] (Lock default/locksmith "
        'forbids DELETE of pods "p"; nobody is exempt)'
    ]
