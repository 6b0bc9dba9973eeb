"""Fixtures and helpers for the proxy end-to-end tests (no tests of its own).

One ``klockproxy`` local-mode proxy per test module, in front of the ``kube_target`` (the
sandbox, or a real cluster via KLOCKPROXY_E2E_KUBECONFIG), with BOTH lock sources: the cluster
(Locks created with kubectl) and a lock directory (Locks written as files). Each test works
in a fresh namespace and puts its Locks there, so tests never see each other's locks.

Waiting for a lock to take effect looks at the proxy's own lock set (in-process): the proxy
applies a new lock within a second, and the tests must not depend on how fast this machine is.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from klockproxy.core.locks import Lock
from klockproxy.crd import crd_text
from klockproxy.proxy.serve import ProxyThread, ServeSettings
from tests.e2e.kube import Kubectl, KubeTarget

Via = Literal["file", "cluster"]
VIAS: tuple[Via, ...] = ("file", "cluster")
DENIED = "denied, there is a lock: "
WAIT_SECONDS = 30.0


@dataclass
class Proxy:
    """The running proxy and kubectl through it (as the admin of the target)."""

    thread: ProxyThread
    kubectl: Kubectl
    lock_dir: Path

    def locks(self) -> dict[str, Lock]:
        lock_set = self.thread.service.lock_set
        engine = lock_set.engine if lock_set is not None else None
        return {lock.key: lock for lock in engine.locks} if engine is not None else {}

    def wait(self, predicate: Callable[[dict[str, Lock]], bool], what: str) -> None:
        """Wait until the proxy's lock set satisfies ``predicate`` (fails after a long while)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if predicate(self.locks()):
                return
            time.sleep(0.02)
        raise AssertionError(f"the proxy never saw {what}; it has {sorted(self.locks())}")


def lock_manifest(
    name: str,
    namespace: str,
    operations: list[str],
    matcher: dict[str, str] | None,
    exclusive: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"operations": operations}
    if matcher is not None:
        spec["matcher"] = matcher
    if exclusive is not None:
        spec["exclusive"] = exclusive
    return {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class Locks:
    """Create and remove Locks in one namespace, as a file or in the cluster."""

    proxy: Proxy
    admin: Kubectl
    namespace: str
    via: Via = "cluster"
    files: list[Path] = field(default_factory=list)

    def add(
        self,
        name: str,
        operations: list[str],
        matcher: dict[str, str] | None,
        exclusive: dict[str, str] | None = None,
        *,
        via: Via | None = None,
    ) -> None:
        """Create (or replace) a Lock and wait until the proxy enforces exactly it."""
        manifest = lock_manifest(name, self.namespace, operations, matcher, exclusive)
        text = yaml.safe_dump(manifest)
        if (via or self.via) == "file":
            path = self.proxy.lock_dir / f"{self.namespace}-{name}.yaml"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            self.files.append(path)
        else:
            self.admin("apply", "-f", "-", input=text, check=True)
        key = f"{self.namespace}/{name}"

        def enforced(locks: dict[str, Lock]) -> bool:
            lock = locks.get(key)
            return (
                lock is not None
                and sorted(lock.operations) == sorted(operations)
                and lock.exclusive_name == (exclusive or {}).get("name")
                and lock.exclusive_uid == (exclusive or {}).get("uid")
            )

        self.proxy.wait(enforced, f"lock {key}")

    def remove(self, name: str, *, via: Via | None = None, through_proxy: bool = False) -> None:
        """Delete a Lock (file or ``kubectl delete lock``) and wait until the proxy drops it."""
        if (via or self.via) == "file":
            path = self.proxy.lock_dir / f"{self.namespace}-{name}.yaml"
            path.unlink()
        else:
            k = self.proxy.kubectl if through_proxy else self.admin
            k("delete", "lock", name, namespace=self.namespace, check=True)
        key = f"{self.namespace}/{name}"
        self.proxy.wait(lambda locks: key not in locks, f"lock {key} removed")

    def cleanup(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


# Module scope: mitmproxy keeps its master in process-wide state (mitmproxy.ctx), so two
# embedded proxies must never run at the same time in one test process.
@pytest.fixture(scope="module")
def proxy(
    kube_target: KubeTarget,
    kubectl: Kubectl,
    kubectl_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """klockproxy in front of the target, locks from the cluster and from a directory."""
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    # A real API server serves a new CRD's resource only once it is Established.
    kubectl(
        "wait", "--for=condition=Established", "crd/locks.klock.rnemet.dev", "--timeout=60s",
        check=True, timeout=90,
    )  # fmt: skip
    work = tmp_path_factory.mktemp("klockproxy")
    lock_dir = work / "locks"
    lock_dir.mkdir()
    thread = ProxyThread(
        ServeSettings(
            write_kubeconfig=work / "proxy.kubeconfig",
            kubeconfig=str(kube_target.kubeconfig),
            context=kube_target.admin_context,
            listen="127.0.0.1:0",
            locks=("cluster", str(lock_dir)),
            state_dir=work / "state",
        )
    ).start()
    try:
        through = Kubectl(thread.kubeconfig_path, home=kubectl_home / "proxied")
        yield Proxy(thread, through, lock_dir)
    finally:
        thread.stop()


@pytest.fixture
def locks(proxy: Proxy, kubectl: Kubectl, namespace: str) -> Iterator[Locks]:
    """Locks in the test's namespace, created with kubectl (the cluster source)."""
    helper = Locks(proxy, kubectl, namespace)
    try:
        yield helper
    finally:
        helper.cleanup()


def in_ns(kubectl: Kubectl, namespace: str) -> Callable[..., Any]:
    """``kubectl`` bound to a namespace: ``k("get", "pods")``."""

    def run(*args: str, **kwargs: Any) -> Any:
        kwargs.setdefault("namespace", namespace)
        return kubectl(*args, **kwargs)

    return run


def assert_denied(result: Any, matcher: str = "map[aura:red]", lock: str | None = None) -> None:
    """kubectl failed with the proxy's Forbidden Status naming the lock."""
    assert result.returncode != 0, f"expected a denial, kubectl said: {result.stdout}"
    # kubectl words it differently per command ("Error from server (Forbidden): ...",
    # "error: failed to patch: ... is forbidden: ...", "unable to upgrade connection: ...").
    assert "forbidden" in result.stderr.lower(), result.stderr
    assert DENIED + matcher in result.stderr, result.stderr
    if lock is not None:
        assert f"Lock {lock}" in result.stderr, result.stderr


def assert_ok(result: Any) -> None:
    assert result.returncode == 0, result.stderr


def labels(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, str]:
    obj = kubectl.json("get", *what, namespace=namespace)
    return dict(obj["metadata"].get("labels") or {})


# Only a guard against a hang: a broken stream fails the test instead of blocking it.
HANG_GUARD = 60.0


class Lines:
    """The stdout lines of a running kubectl, read in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, needle: str) -> str:
        """The first line containing ``needle``; fails if kubectl ends first, or if no such
        line arrives within HANG_GUARD (other lines arriving meanwhile do not extend it)."""
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} arrived") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"kubectl ended before {needle!r}: {err}")
            if needle in line:
                return line
