"""Lock sources: files reloaded on change, the cluster watched, combined into a LockSet."""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.cluster import lock_sources
from klockproxy.cluster.lock_sources import (
    ClusterLockSource,
    FileLockSource,
    LockSet,
    create_lock_sources,
)
from klockproxy.cluster.upstream import UpstreamConfig, WatchEvent
from klockproxy.core.errors import ConfigError, LockValidationError
from klockproxy.core.locks import InvalidLock, Lock, load_locks_from_text
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo
from klockproxy.crd import crd_text
from klockproxy.sandbox.server import SandboxThread
from tests.e2e.kube import find_kubectl


def lock_yaml(name: str, *, namespace: str = "default", ops: str = "[UPDATE, DELETE]") -> str:
    return (
        "apiVersion: klock.rnemet.dev/v1\n"
        "kind: Lock\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  operations: {ops}\n  matcher: {{aura: red}}\n"
    )


def write(path: Path, text: str) -> None:
    """Write and make sure the mtime moves even on coarse-timestamp filesystems."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    st = path.stat()
    if st.st_mtime_ns == before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000))


def names(source: FileLockSource | ClusterLockSource | LockSet) -> list[str]:
    if isinstance(source, LockSet):
        assert source.engine is not None
        return sorted(lock.key for lock in source.engine.locks)
    return sorted(lock.key for lock in source.locks)


async def test_file_source_loads_and_reloads_on_change(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred"))
    src = FileLockSource([f], poll_interval=0.05)
    changes: list[int] = []
    src.on_change = lambda: changes.append(len(src.locks))
    await src.start()
    try:
        assert src.ready
        assert names(src) == ["default/lockred"]
        write(f, lock_yaml("lockred") + "---\n" + lock_yaml("lockblue"))
        # reload_if_changed is what the poller runs; calling it makes the test deterministic.
        assert await src.reload_if_changed()
        assert names(src) == ["default/lockblue", "default/lockred"]
        assert changes[-1] == 2
        assert not await src.reload_if_changed()
    finally:
        await src.stop()


async def test_file_source_poller_picks_up_an_edit(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("one"))
    src = FileLockSource([f], poll_interval=0.02)
    changed = asyncio.Event()
    src.on_change = changed.set
    await src.start()
    try:
        changed.clear()
        write(f, lock_yaml("two"))
        await asyncio.wait_for(changed.wait(), 10)
        assert names(src) == ["default/two"]
    finally:
        await src.stop()


async def test_invalid_edit_keeps_last_good_set_and_logs_without_contents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred"))
    src = FileLockSource([f], poll_interval=60)
    await src.start()
    try:
        secret_looking = "s3cr3t-value-that-must-not-be-logged"
        write(f, lock_yaml("lockred", ops=f"[UPDATE, {secret_looking}]"))
        with caplog.at_level(logging.ERROR, logger="klockproxy.cluster.lock_sources"):
            assert not await src.reload_if_changed()
        assert names(src) == ["default/lockred"]
        assert src.last_error is not None and str(f) in src.last_error
        assert "keeping the previous 1 lock" in caplog.text
        assert "spec.operations" in caplog.text
        # Malformed YAML too.
        write(f, "spec: [unclosed\n")
        assert not await src.reload_if_changed()
        assert names(src) == ["default/lockred"]
        # Fixing the file takes effect again.
        write(f, lock_yaml("fixed"))
        assert await src.reload_if_changed()
        assert names(src) == ["default/fixed"]
        assert src.last_error is None
    finally:
        await src.stop()


async def test_invalid_file_at_start_raises(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("x", ops="[UPDATE, SMASH]"))
    src = FileLockSource([f])
    with pytest.raises(LockValidationError, match=r"spec\.operations"):
        await src.start()


async def test_directory_source_follows_added_and_removed_files(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    write(d / "a.yaml", lock_yaml("a"))
    write(d / "notes.txt", "not a lock file, ignored")
    src = FileLockSource([d], poll_interval=60)
    await src.start()
    try:
        assert names(src) == ["default/a"]
        write(d / "b.yml", lock_yaml("b", namespace="prod"))
        assert await src.reload_if_changed()
        assert names(src) == ["default/a", "prod/b"]
        (d / "a.yaml").unlink()
        assert await src.reload_if_changed()
        assert names(src) == ["prod/b"]
        # A second file defining the same lock is an error: keep the last good set.
        write(d / "c.yaml", lock_yaml("b", namespace="prod"))
        assert not await src.reload_if_changed()
        assert names(src) == ["prod/b"]
    finally:
        await src.stop()


async def test_lock_set_combines_and_fails_closed_until_ready(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred"))

    class NeverReady:
        """A source that never becomes ready (e.g. an unreachable cluster)."""

        ready = False
        locks = ()
        invalid = ()
        on_change = None

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

    lockset = LockSet([FileLockSource([f]), NeverReady()])
    await lockset.start()
    try:
        assert lockset.engine is None
        assert not await lockset.wait_ready(0.05)
    finally:
        await lockset.stop()

    lockset = LockSet([FileLockSource([f])])
    await lockset.start()
    try:
        assert lockset.engine is not None
        assert lockset.engine.covers("default", Operation.UPDATE)
        assert not lockset.engine.covers("default", Operation.CREATE)
        assert lockset.describe() == f"1 lock from {f}"
    finally:
        await lockset.stop()


def test_create_lock_sources_validates_specs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        create_lock_sources([str(tmp_path / "missing.yaml")], None)
    with pytest.raises(ConfigError, match="cluster"):
        create_lock_sources(["cluster"], None)
    f = tmp_path / "l.yaml"
    write(f, lock_yaml("a"))
    lockset = create_lock_sources([str(f)], None)
    assert len(lockset.sources) == 1
    assert isinstance(lockset.sources[0], FileLockSource)
    assert create_lock_sources([], None).engine is not None


# ---------------------------------------------------------------------------------------------
# The cluster source against the sandbox API server, Locks created and deleted with kubectl.


def _kubectl(kubeconfig: Path, home: Path, *args: str, stdin: str | None = None) -> str:
    kubectl = find_kubectl()
    assert kubectl is not None, "kubectl is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    result = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", f"--cache-dir={home / 'cache'}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _until(predicate: Callable[[], bool], what: str) -> None:
    # A generous bound only so that a broken watch fails the test instead of hanging it.
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_cluster_source_follows_locks_created_with_kubectl(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    sb = sandbox_thread
    kubeconfig = sb.sandbox.kubeconfig_path
    assert kubeconfig is not None
    home = tmp_path / "home"
    token_file = tmp_path / "token"
    token_file.write_text(sb.admin_token)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(sb.ca_pem)
    config = UpstreamConfig(server=sb.url, ca_file=str(ca_file), token_file=str(token_file))
    lockset = create_lock_sources(["cluster"], config)
    source = lockset.sources[0]
    assert isinstance(source, ClusterLockSource)
    source.crd_retry_interval = 0.05
    await lockset.start()
    try:
        # No CRD yet: ready (zero locks), and the source says why.
        assert await lockset.wait_ready(20)
        assert lockset.engine is not None and lockset.engine.lock_count == 0
        assert "CRD not installed" in lockset.describe()

        await asyncio.to_thread(_kubectl, kubeconfig, home, "apply", "-f", "-", stdin=crd_text())
        await asyncio.to_thread(
            _kubectl, kubeconfig, home, "apply", "-f", "-", stdin=lock_yaml("lockred")
        )
        await _until(lambda: names(lockset) == ["default/lockred"], "lockred to appear")
        assert lockset.describe() == "1 lock from cluster"
        assert lockset.engine.covers("default", Operation.DELETE)

        await asyncio.to_thread(
            _kubectl,
            kubeconfig,
            home,
            "apply",
            "-f",
            "-",
            stdin=lock_yaml("lockred", ops="[CREATE]")
            + "---\n"
            + lock_yaml("other", namespace="kube-system"),
        )
        await _until(
            lambda: (
                names(lockset) == ["default/lockred", "kube-system/other"]
                and lockset.engine is not None
                and lockset.engine.covers("default", Operation.CREATE)
            ),
            "the modified and the new lock",
        )
        assert not lockset.engine.covers("default", Operation.DELETE)

        await asyncio.to_thread(_kubectl, kubeconfig, home, "delete", "lock", "lockred")
        await _until(lambda: names(lockset) == ["kube-system/other"], "lockred to go")
    finally:
        await lockset.stop()


async def test_cluster_source_is_not_ready_while_unreachable(tmp_path: Path) -> None:
    # Nothing listens on port 9 of localhost: the source retries and stays not ready.
    lockset = create_lock_sources(["cluster"], UpstreamConfig(server="https://127.0.0.1:9"))
    await lockset.start()
    try:
        assert not await lockset.wait_ready(0.3)
        assert lockset.engine is None
    finally:
        await lockset.stop()


def _pod(namespace: str, labels: dict[str, str]) -> AdmissionInput:
    return AdmissionInput(
        operation=Operation.DELETE,
        namespace=namespace,
        resource=ResourceRef("", "v1", "pods"),
        name="p",
        user=UserInfo("kubernetes-admin"),
        old_labels=labels,
    )


def invalid_keys(lockset: LockSet) -> list[str]:
    assert lockset.engine is not None
    return [bad.key for bad in lockset.engine.invalid]


async def test_cluster_source_refuses_the_namespace_of_an_invalid_lock(
    sandbox_thread: SandboxThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRD (like Klock's) does not validate operations or expressions: a Lock the cluster
    holds but klockproxy cannot read refuses every mutation in its namespace until fixed."""
    sb = sandbox_thread
    kubeconfig = sb.sandbox.kubeconfig_path
    assert kubeconfig is not None
    home = tmp_path / "home"
    await asyncio.to_thread(_kubectl, kubeconfig, home, "apply", "-f", "-", stdin=crd_text())
    token_file = tmp_path / "token"
    token_file.write_text(sb.admin_token)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(sb.ca_pem)
    config = UpstreamConfig(server=sb.url, ca_file=str(ca_file), token_file=str(token_file))
    lockset = create_lock_sources(["cluster"], config)
    await lockset.start()
    try:
        apply = functools.partial(_kubectl, kubeconfig, home, "apply", "-f", "-")
        await asyncio.to_thread(apply, stdin=lock_yaml("lockred"))
        await _until(lambda: names(lockset) == ["default/lockred"], "lockred")
        blue, red = {"aura": "blue"}, {"aura": "red"}
        engine = lockset.engine
        assert engine is not None and engine.decide(_pod("default", blue)).allowed

        with caplog.at_level(logging.INFO, logger="klockproxy.cluster.lock_sources"):
            # A new Lock with a misspelt operation: the whole namespace is refused.
            await asyncio.to_thread(apply, stdin=lock_yaml("typo", ops="[UPDTAE, DELETE]"))
            await _until(lambda: invalid_keys(lockset) == ["default/typo"], "the invalid lock")
            engine = lockset.engine
            assert engine is not None
            for op in Operation:
                assert engine.covers("default", op)
            d = engine.decide(_pod("default", blue))
            assert not d.allowed
            assert d.message.startswith(
                "denied, Lock default/typo is invalid (spec.operations[0]: unknown operation "
                "'UPDTAE'"
            )
            assert d.message.endswith("): fix or delete it")
            assert engine.decide(_pod("kube-system", red)).allowed
            assert "1 invalid refusing their namespace: default/typo" in lockset.describe()

            # An edit that makes a valid Lock invalid: its old version is not kept in its place.
            await asyncio.to_thread(apply, stdin=lock_yaml("lockred", ops="[UPDATE, DELTE]"))
            # An empty expression and a dangling operator pass the CRD schema too.
            empty = lock_yaml("empty", namespace="kube-system").replace("aura: red", "aura: ''")
            dangling = lock_yaml("dangling", namespace="kube-system").replace("red", "'red|'")
            await asyncio.to_thread(apply, stdin=empty + "---\n" + dangling)
            await _until(
                lambda: (
                    invalid_keys(lockset)
                    == [
                        "default/lockred",
                        "default/typo",
                        "kube-system/dangling",
                        "kube-system/empty",
                    ]
                ),
                "the other invalid locks",
            )
            assert names(lockset) == []
            engine = lockset.engine
            assert engine is not None
            assert not engine.decide(_pod("kube-system", blue)).allowed
            assert not engine.decide(_pod("default", blue)).allowed
            assert engine.decide(_pod("other", red)).allowed

            # Fixed or deleted: the namespaces follow their (valid) locks again.
            await asyncio.to_thread(apply, stdin=lock_yaml("typo"))
            await asyncio.to_thread(apply, stdin=lock_yaml("lockred"))
            await asyncio.to_thread(
                _kubectl, kubeconfig, home, "delete", "lock", "empty", "dangling",
                "--namespace", "kube-system",
            )  # fmt: skip
            await _until(
                lambda: (
                    invalid_keys(lockset) == []
                    and names(lockset) == ["default/lockred", "default/typo"]
                ),
                "the fixed and deleted locks",
            )
            engine = lockset.engine
            assert engine is not None
            assert engine.decide(_pod("default", blue)).allowed
            assert engine.decide(_pod("kube-system", blue)).allowed
            assert [x.lock.key for x in engine.decide(_pod("default", red)).denials] == [
                "default/lockred",
                "default/typo",
            ]
            assert lockset.describe() == "2 locks from cluster"

        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        # Each invalid Lock is logged once, by name and field.
        assert len(errors) == 4, errors
        assert any(
            "invalid Lock default/typo in the cluster (spec.operations[0]: unknown operation "
            "'UPDTAE'" in e
            for e in errors
        )
        assert any(
            "invalid Lock default/lockred in the cluster (spec.operations[1]" in e for e in errors
        )
        assert any(
            "invalid Lock kube-system/empty in the cluster (spec.matcher.aura" in e for e in errors
        )
        assert any(
            "invalid Lock kube-system/dangling in the cluster (spec.matcher.aura" in e
            for e in errors
        )
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert "invalid Lock default/typo is fixed: its namespace follows its locks again" in infos
        assert (
            "invalid Lock kube-system/empty is deleted: its namespace follows its locks again"
            in infos
        )
    finally:
        await lockset.stop()


def _cluster_config(sb: SandboxThread, tmp_path: Path) -> UpstreamConfig:
    token_file = tmp_path / "token"
    token_file.write_text(sb.admin_token)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(sb.ca_pem)
    return UpstreamConfig(server=sb.url, ca_file=str(ca_file), token_file=str(token_file))


def _crd_serving(v1_served: bool) -> str:
    """The Lock CRD after a version upgrade: v2 added (stored); v1 served or not."""
    crd = yaml.safe_load(crd_text())
    v1 = crd["spec"]["versions"][0]
    v2 = copy.deepcopy(v1)
    v2["name"] = "v2"
    v1["served"], v1["storage"] = v1_served, False
    crd["spec"]["versions"] = [v1, v2]
    return yaml.safe_dump(crd)


async def test_a_lock_crd_that_stops_serving_v1_fails_closed(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    """The Locks still exist but cannot be read as v1: that is not "no CRD, zero locks"."""
    sb = sandbox_thread
    kubeconfig = sb.sandbox.kubeconfig_path
    assert kubeconfig is not None
    home = tmp_path / "home"
    apply = functools.partial(_kubectl, kubeconfig, home, "apply", "-f", "-")
    await asyncio.to_thread(apply, stdin=crd_text())
    await asyncio.to_thread(apply, stdin=lock_yaml("lockred"))
    lockset = create_lock_sources(["cluster"], _cluster_config(sb, tmp_path))
    source = lockset.sources[0]
    assert isinstance(source, ClusterLockSource)
    source.crd_retry_interval = 0.05
    await lockset.start()
    try:
        assert await lockset.wait_ready(20)
        assert names(lockset) == ["default/lockred"]

        await asyncio.to_thread(apply, stdin=_crd_serving(v1_served=False))
        await _until(lambda: lockset.engine is None, "the lock set to fail closed")
        assert "does not serve v1 (it serves v2)" in lockset.describe()
        assert "not installed" not in lockset.describe()

        await asyncio.to_thread(apply, stdin=_crd_serving(v1_served=True))
        await _until(lambda: lockset.engine is not None, "the lock set to be back")
        assert names(lockset) == ["default/lockred"]
    finally:
        await lockset.stop()


async def test_a_watch_event_rebuilds_only_its_namespace(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    sb = sandbox_thread
    kubeconfig = sb.sandbox.kubeconfig_path
    assert kubeconfig is not None
    home = tmp_path / "home"
    apply = functools.partial(_kubectl, kubeconfig, home, "apply", "-f", "-")
    await asyncio.to_thread(apply, stdin=crd_text())
    await asyncio.to_thread(
        apply, stdin=lock_yaml("a", namespace="kube-system") + "---\n" + lock_yaml("b")
    )
    lockset = create_lock_sources(["cluster"], _cluster_config(sb, tmp_path))
    await lockset.start()
    try:
        assert await lockset.wait_ready(20)
        await _until(lambda: len(names(lockset)) == 2, "both locks")
        before = lockset.engine
        assert before is not None
        await asyncio.to_thread(apply, stdin=lock_yaml("c"))
        await _until(lambda: len(names(lockset)) == 3, "the new lock")
        after = lockset.engine
        assert after is not None
        # The other namespace's structures were taken over as they were, not rebuilt.
        assert after.namespace_locks("kube-system") is before.namespace_locks("kube-system")
        assert [lk.name for lk in after.namespace_locks("default")] == ["b", "c"]
    finally:
        await lockset.stop()


class FakeSource:
    """A ready source whose locks a test sets directly."""

    def __init__(self) -> None:
        self.ready = True
        self.locks: tuple[Lock, ...] = ()
        self.invalid: tuple[InvalidLock, ...] = ()
        self.on_change: Callable[[], None] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def set(self, *locks: Lock) -> None:
        self.locks = locks
        assert self.on_change is not None
        self.on_change()


def _lock(name: str, namespace: str = "default") -> Lock:
    (lock,) = load_locks_from_text(lock_yaml(name, namespace=namespace), source="test")
    return lock


async def test_a_burst_of_changes_is_one_engine_build() -> None:
    source = FakeSource()
    lockset = LockSet([source])
    await lockset.start()
    try:
        first = lockset.builds
        for i in range(50):
            source.set(*(_lock(f"l{j}") for j in range(i + 1)))
        await lockset.settled()
        assert lockset.builds == first + 1
        assert len(names(lockset)) == 50
    finally:
        await lockset.stop()


async def test_an_unreachable_cluster_is_logged_once_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lockset = create_lock_sources(["cluster"], UpstreamConfig(server="https://127.0.0.1:9"))
    source = lockset.sources[0]
    assert isinstance(source, ClusterLockSource)
    source.min_backoff = 0.01
    source.max_backoff = 0.02
    with caplog.at_level(logging.DEBUG):
        await lockset.start()
        try:
            # Many retries within this time (backoff 10-20 ms).
            assert not await lockset.wait_ready(0.5)
        finally:
            await lockset.stop()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert "cannot be reached" in loud[0].getMessage()
    retries = [
        r for r in caplog.records if "retry" in r.getMessage() and r.levelno == logging.DEBUG
    ]
    assert len(retries) >= 3


async def test_a_lock_written_through_the_proxy_is_in_force_before_the_watch_says_so(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    sb = sandbox_thread
    kubeconfig = sb.sandbox.kubeconfig_path
    assert kubeconfig is not None
    home = tmp_path / "home"
    await asyncio.to_thread(_kubectl, kubeconfig, home, "apply", "-f", "-", stdin=crd_text())
    lockset = create_lock_sources(["cluster"], _cluster_config(sb, tmp_path))
    await lockset.start()
    try:
        assert await lockset.wait_ready(20)
        # As the API server returns a created Lock (the watch has not delivered it).
        obj = yaml.safe_load(lock_yaml("written"))
        obj["metadata"]["resourceVersion"] = "999999"
        assert lockset.apply_written(obj, deleted=False)
        await lockset.settled()
        assert names(lockset) == ["default/written"]
        # An older state from the watch does not undo it (the sandbox never made it: a
        # relist after 410 would; here the write simply stays until deleted).
        deleted = dict(
            obj, metadata=dict(obj["metadata"], deletionTimestamp="2026-01-01T00:00:00Z")
        )
        assert not lockset.apply_written(deleted, deleted=True)
        assert names(lockset) == ["default/written"]
        assert lockset.apply_written(obj, deleted=True)
        await lockset.settled()
        assert names(lockset) == []
    finally:
        await lockset.stop()


# ---------------------------------------------------------------------------------------------
# Files: only what changed is read; empty and half-written files are not "no locks".


async def test_only_the_files_that_changed_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    write(d / "a.yaml", lock_yaml("a", namespace="one"))
    write(d / "b.yaml", lock_yaml("b", namespace="two"))
    read: list[str] = []
    original = lock_sources.lock_file_steps

    def spy(text: str, *, source: str, **kwargs: Any) -> Any:
        read.append(Path(source).name)
        return original(text, source=source, **kwargs)

    monkeypatch.setattr(lock_sources, "lock_file_steps", spy)
    lockset = LockSet([FileLockSource([d])])
    await lockset.start()
    try:
        assert read == ["a.yaml", "b.yaml"]
        before = lockset.engine
        assert before is not None
        source = lockset.sources[0]
        assert isinstance(source, FileLockSource)
        write(d / "b.yaml", lock_yaml("b2", namespace="two"))
        assert await source.reload_if_changed()
        await lockset.settled()
        assert read == ["a.yaml", "b.yaml", "b.yaml"]
        assert names(lockset) == ["one/a", "two/b2"]
        after = lockset.engine
        assert after is not None
        assert after.namespace_locks("one") is before.namespace_locks("one")
        (d / "a.yaml").unlink()
        assert await source.reload_if_changed()
        await lockset.settled()
        assert read == ["a.yaml", "b.yaml", "b.yaml"]
        assert names(lockset) == ["two/b2"]
    finally:
        await lockset.stop()


@pytest.mark.parametrize("emptied", ["", "\n\n", "---\n", "# generated by gen.sh\n"])
async def test_an_emptied_lock_file_keeps_the_last_good_set(tmp_path: Path, emptied: str) -> None:
    """``gen > locks.yaml`` truncates the file before gen writes it: not "no locks"."""
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred"))
    src = FileLockSource([f])
    await src.start()
    try:
        write(f, emptied)
        assert not await src.reload_if_changed()
        assert names(src) == ["default/lockred"]
        assert src.last_error is not None and "defines no Lock" in src.last_error
        assert "# no locks" in src.last_error
    finally:
        await src.stop()


@pytest.mark.parametrize(
    "meant",
    [
        "# no locks\n",
        "# No locks\n---\n",
        "apiVersion: klock.rnemet.dev/v1\nkind: LockList\nitems: []\n",
    ],
)
async def test_a_file_that_says_it_has_no_locks_unlocks(tmp_path: Path, meant: str) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred"))
    src = FileLockSource([f])
    await src.start()
    try:
        write(f, meant)
        assert await src.reload_if_changed()
        assert names(src) == []
        assert src.last_error is None
    finally:
        await src.stop()


async def test_an_empty_lock_file_is_refused_at_start(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, "")
    with pytest.raises(LockValidationError, match="defines no Lock"):
        await FileLockSource([f]).start()
    g = tmp_path / "locks.json"
    write(g, "")
    with pytest.raises(LockValidationError, match="defines no Lock"):
        await FileLockSource([g]).start()


async def test_a_file_being_written_is_read_once_it_holds_still(tmp_path: Path) -> None:
    """The poller reads a changed file only when it did not move since the previous poll:
    a generator writing Lock after Lock is never read half-way."""
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("old"))
    src = FileLockSource([f])
    await src.start()
    try:
        assert not await src.poll_once()  # the first look
        full = "---\n".join(lock_yaml(f"l{i}") for i in range(4))
        # The shell truncated the file and the generator wrote two of four Locks so far.
        write(f, full[: full.index("---\n", len(lock_yaml("l0")) + 4)])
        assert not await src.poll_once()
        assert names(src) == ["default/old"]
        write(f, full)
        assert not await src.poll_once()
        assert names(src) == ["default/old"]
        # Unchanged for one poll: read now.
        assert await src.poll_once()
        assert names(src) == [f"default/l{i}" for i in range(4)]
    finally:
        await src.stop()


async def test_touching_a_lock_file_rebuilds_nothing(tmp_path: Path) -> None:
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("a") + "---\n" + lock_yaml("b", namespace="two"))
    lockset = LockSet([FileLockSource([f])])
    await lockset.start()
    try:
        source = lockset.sources[0]
        assert isinstance(source, FileLockSource)
        builds, engine = lockset.builds, lockset.engine
        write(f, f.read_text())  # same Locks, new mtime
        assert not await source.reload_if_changed()
        await lockset.settled()
        assert lockset.builds == builds and lockset.engine is engine
        # One Lock changed: its namespace alone is rebuilt.
        write(f, lock_yaml("a") + "---\n" + lock_yaml("b", namespace="two", ops="[CREATE]"))
        assert await source.reload_if_changed()
        await lockset.settled()
        after = lockset.engine
        assert after is not None and engine is not None
        assert after.namespace_locks("default") is engine.namespace_locks("default")
        assert after.covers("two", Operation.CREATE)
    finally:
        await lockset.stop()


class ScriptedWatch:
    """Stands in for Upstream: ``watch`` yields the events a test puts in ``events``."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[WatchEvent] = asyncio.Queue()

    async def watch(self, path: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        while True:
            yield await self.events.get()

    async def get_object(self, path: str, headers: Any) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        return None


def _lock_object(name: str, rv: str) -> dict[str, Any]:
    obj = yaml.safe_load(lock_yaml(name))
    obj["metadata"]["resourceVersion"] = rv
    return dict(obj)


async def test_a_cut_lock_watch_refuses_mutations_until_it_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Locks made while the watch is cut would go unseen: fail closed meanwhile."""
    api = ScriptedWatch()
    lockset = LockSet([ClusterLockSource(api)])  # type: ignore[arg-type]
    await lockset.start()
    try:
        await api.events.put(WatchEvent("LISTED", items=(_lock_object("a", "5"),)))
        assert await lockset.wait_ready(10)
        assert names(lockset) == ["default/a"]

        await api.events.put(WatchEvent("DOWN", error="the watch connection failed: reset"))
        await _until(lambda: lockset.engine is None, "the lock set to fail closed")
        assert "Lock watch is cut: the watch connection failed: reset" in lockset.describe()
        assert not await lockset.wait_ready(0.05)

        # Back from where it was: nothing missed, nothing listed again.
        await api.events.put(WatchEvent("RESUMED", resource_version="5"))
        await _until(lambda: lockset.engine is not None, "the lock set to be back")
        assert names(lockset) == ["default/a"]
        await api.events.put(WatchEvent("ADDED", object=_lock_object("b", "6")))
        await _until(lambda: names(lockset) == ["default/a", "default/b"], "the new lock")
    finally:
        await lockset.stop()


def test_quiet_gc_holds_full_collections_while_many_locks_are_made() -> None:
    """A full collection walks every object of the process at once (0.4-1.4 s measured with
    10,000 Locks loaded): none runs while many Locks are made, and what they leave is moved
    out of the collector's way afterwards."""
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        with lock_sources.quiet_gc(10):
            assert gc.get_threshold() == before  # a few Locks: nothing changes
        with lock_sources.quiet_gc(lock_sources.QUIET_GC_LOCKS):
            assert gc.get_threshold()[:2] == before[:2]  # young collections still run
            assert gc.get_threshold()[2] > 1_000_000
            kept = [[i] for i in range(1000)]
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()


async def test_replaced_locks_are_released_and_unchanged_ones_kept(tmp_path: Path) -> None:
    """A reload frees the Locks it replaced (a few at a time, after the engine swap) and
    keeps nothing else alive; a rewrite with the same Locks keeps the ones the engine holds."""
    f = tmp_path / "locks.yaml"
    write(f, lock_yaml("lockred") + "---\n" + lock_yaml("lockblue", namespace="other"))
    src = FileLockSource([f], poll_interval=60)
    lock_set = LockSet([src])
    await lock_set.start()
    try:
        assert lock_set.engine is not None
        held = {lock.key: lock for lock in lock_set.engine.locks}
        os.utime(f, ns=(1, 1))  # the same text, another stamp: read again
        assert not await src.reload_if_changed()
        # The very objects the engine holds, not equal copies (those are released).
        assert all(held[lock.key] is lock for lock in src.locks)
        assert src.take_retired() == []
        write(f, lock_yaml("lockred") + "---\n" + lock_yaml("lockgreen", namespace="other"))
        assert await src.reload_if_changed()
        await lock_set.settled()
        assert names(lock_set) == ["default/lockred", "other/lockgreen"]
        assert src.take_retired() == []  # released by the build that replaced them
        assert src.namespace_locks("default")[0] is held["default/lockred"]
    finally:
        await lock_set.stop()
