"""Faults, with real kubectl through ``klockproxy serve`` (issue 10, "Faults"): the API server
restarted mid-watch and mid-mutation, a slow API server answer, a thousand idle clients.

Each test here stops, restarts or slows the API server, so they run against a sandbox of
their own (one per module, restartable on the same port) and skip against a real cluster.
The sandbox keeps its objects in memory: a restart brings back its CA and tokens (the state
directory) but not its objects, so the tests create what they need again afterwards.

The Locks come from a lock file: with the cluster source, the cut Lock watch would refuse
every mutation before any lookup is tried, and the lookup path is what is under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.proxy import addon as addon_module
from klockproxy.proxy.serve import ProxyThread, ServeSettings
from klockproxy.sandbox.server import SandboxThread
from tests.e2e.conftest import E2E_KUBECONFIG_ENV
from tests.e2e.kube import Kubectl, stop_process, wait_can_i, wait_until
from tests.e2e.proxy_support import HANG_GUARD, Lines, lock_manifest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        bool(os.environ.get(E2E_KUBECONFIG_ENV)),
        reason="stops, restarts and slows the API server: needs a sandbox of its own",
    ),
]

NS = "app"
JONNY = f"system:serviceaccount:{NS}:jonny-op"


@dataclass
class Restartable:
    """A sandbox that can be stopped and started again on the same port."""

    state_dir: Path
    kubeconfig: Path
    port: int = 0
    thread: SandboxThread | None = None
    old: list[SandboxThread] = field(default_factory=list)

    def start(self, state_dir: Path | None = None) -> SandboxThread:
        thread = SandboxThread(port=self.port, state_dir=state_dir or self.state_dir).start()
        self.port = thread.sandbox.port
        self.thread = thread
        if state_dir is None:
            thread.write_kubeconfig(self.kubeconfig)
        return thread

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    def hold(self, method: str, path: str) -> asyncio.Event:
        """Hold back the sandbox's answers to ``method path`` until the event is set."""
        thread = self.thread
        if thread is None:
            raise RuntimeError("the sandbox is not running")

        def install() -> asyncio.Event:
            gate = asyncio.Event()
            thread.sandbox.server.held[(method, path)] = gate
            return gate

        gate: asyncio.Event = thread.call(install)
        return gate

    def release(self, gate: asyncio.Event) -> None:
        if self.thread is not None:
            self.thread.call(gate.set)


@dataclass
class Setup:
    sandbox: Restartable
    admin: Kubectl
    proxy: ProxyThread
    through: Kubectl


def seed(admin: Kubectl) -> None:
    """The objects every test expects (again after a restart)."""
    admin("create", "namespace", NS, check=True)
    for args in (
        ("run", "my-pod", "--image", "nginx", "--labels", "aura=red"),
        ("run", "other-pod", "--image", "nginx"),
        ("run", "red-two", "--image", "nginx", "--labels", "aura=red"),
        ("create", "serviceaccount", "jonny-op"),
        ("create", "role", "app-op", "--verb=get,list,patch", "--resource=pods"),
        ("create", "rolebinding", "jonny-app", "--role=app-op", f"--serviceaccount={NS}:jonny-op"),
    ):
        admin(*args, namespace=NS, check=True)
    wait_can_i(admin, "patch", "pods", as_user=JONNY, namespace=NS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, kubectl_home: Path) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("faults")
    sandbox = Restartable(work / "sandbox-state", work / "sandbox.kubeconfig")
    sandbox.start()
    lock_dir = work / "locks"
    lock_dir.mkdir()
    lock = lock_manifest("lockred", NS, ["UPDATE", "DELETE"], {"aura": "red"}, {"name": "jonny-op"})
    (lock_dir / "lockred.yaml").write_text(yaml.safe_dump(lock))
    admin = Kubectl(sandbox.kubeconfig, home=kubectl_home / "faults-admin", context="admin")
    seed(admin)
    proxy = ProxyThread(
        ServeSettings(
            write_kubeconfig=work / "proxy.kubeconfig",
            kubeconfig=str(sandbox.kubeconfig),
            context="admin",
            listen="127.0.0.1:0",
            locks=(str(lock_dir),),
            state_dir=work / "proxy-state",
        )
    ).start()
    try:
        through = Kubectl(proxy.kubeconfig_path, home=kubectl_home / "faults-proxied")
        yield Setup(sandbox, admin, proxy, through)
    finally:
        proxy.stop()
        sandbox.stop()


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        stop_process(p)


def restart(s: Setup) -> None:
    """Stop the API server, start it again (same port, CA and tokens), seed it again."""
    s.sandbox.stop()
    s.sandbox.start()
    seed(s.admin)


def assert_readable_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """kubectl failed with a Status it could print: no HTML, the cause named."""
    assert result.returncode != 0, result.stdout
    assert "<html" not in result.stderr.lower(), result.stderr
    assert "Error from server" in result.stderr or "error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_a_watch_through_a_restart_ends_and_a_new_one_works(
    setup: Setup, running: list[subprocess.Popen[str]]
) -> None:
    watch = setup.through.popen("get", "pods", "-w", "-o", "name", namespace=NS)
    running.append(watch)
    lines = Lines(watch)
    lines.until("pod/my-pod")
    setup.sandbox.stop()
    # The API server is gone: the watch ends (kubectl exits) rather than hanging, and what
    # it says is not an HTML page.
    _, err = watch.communicate(timeout=HANG_GUARD)
    assert "<html" not in err.lower(), err
    setup.sandbox.start()
    seed(setup.admin)
    again = setup.through.popen("get", "pods", "-w", "-o", "name", namespace=NS)
    running.append(again)
    lines = Lines(again)
    lines.until("pod/my-pod")
    setup.admin("run", "after-restart", "--image", "nginx", namespace=NS, check=True)
    assert lines.until("pod/after-restart") == "pod/after-restart"


def test_mutations_while_the_api_server_is_down_get_a_status_then_work_again(
    setup: Setup,
) -> None:
    setup.sandbox.stop()
    try:
        # Covered (its old labels must be looked up) and uncovered (forwarded as it is).
        covered = setup.through(
            "patch", "pod", "my-pod", "--type=merge", "-p", '{"metadata":{"labels":{"x":"1"}}}',
            namespace=NS,
        )  # fmt: skip
        assert_readable_failure(covered, "ServiceUnavailable")
        plain = setup.through("label", "pod", "other-pod", "x=1", namespace=NS)
        assert_readable_failure(plain)
        read = setup.through("get", "pods", namespace=NS)
        assert_readable_failure(read)
    finally:
        setup.sandbox.start()
        seed(setup.admin)
    # Back: allowed writes go through again once the proxy has caught up with the restarted
    # API server (until then it refuses with a Status saying what it waits for), and the
    # lock is enforced as before.

    def jonny_labels() -> bool:
        ok = setup.through("label", "pod", "my-pod", "x=1", namespace=NS, as_user=JONNY)
        if ok.returncode != 0:
            assert_readable_failure(ok, "ServiceUnavailable")
        return ok.returncode == 0

    wait_until(jonny_labels, "an allowed write through the proxy after the restart")
    denied = setup.through("label", "pod", "my-pod", "y=1", namespace=NS)
    assert denied.returncode != 0 and "there is a lock" in denied.stderr, denied.stderr
    ok = setup.through("label", "pod", "other-pod", "x=1", namespace=NS)
    assert ok.returncode == 0, ok.stderr
    labels = setup.admin.json("get", "pod", "my-pod", namespace=NS)["metadata"]["labels"]
    assert labels.get("x") == "1"


# The first PATCH of my-pod the API server sees is the proxy's own lookup (the patch sent
# with dryRun=All, whose result is judged); kubectl sends its PATCH only to the proxy. A
# JSON patch: a merge patch of labels alone is judged on the ownership index, with no lookup.
LOOKUP = ("PATCH", f"/api/v1/namespaces/{NS}/pods/my-pod")
JSON_PATCH = ("patch", "pod", "my-pod", "--type=json", "-p")


def add_label(key: str, value: str) -> str:
    return json.dumps([{"op": "add", "path": f"/metadata/labels/{key}", "value": value}])


def test_the_api_server_going_down_during_a_lookup_gives_a_status(
    setup: Setup, running: list[subprocess.Popen[str]]
) -> None:
    gate = setup.sandbox.hold(*LOOKUP)
    try:
        patch = setup.through.popen(
            *JSON_PATCH, add_label("mid", "yes"), as_user=JONNY, namespace=NS
        )
        running.append(patch)
        wait_held(setup, *LOOKUP)
        setup.sandbox.stop()  # the held lookup's connection goes down with it
        out, err = patch.communicate(timeout=HANG_GUARD)
    finally:
        setup.sandbox.start()
        seed(setup.admin)
    assert_readable_failure(subprocess.CompletedProcess(patch.args, patch.returncode, out, err))
    # The judgement says it could not be made, and why.
    assert "ServiceUnavailable" in err and "cannot check locks" in err, err
    assert not gate.is_set()


def test_a_slow_lookup_does_not_stall_other_callers(
    setup: Setup, running: list[subprocess.Popen[str]]
) -> None:
    """The proxy's lookup for a covered PATCH is held back by the API server; meanwhile
    reads, uncovered writes and other covered writes of other callers complete."""
    # A test before may have restarted the API server: first let the proxy catch up (its
    # ownership index refuses covered writes with a 503 until it has listed again).
    wait_until(
        lambda: (
            setup.through(
                "label", "pod", "other-pod", "warm=yes", "--overwrite", namespace=NS
            ).returncode
            == 0
        ),
        "the proxy caught up with the API server",
    )
    held = LOOKUP
    gate = setup.sandbox.hold(*held)
    try:
        patch = (*JSON_PATCH, add_label("slow", "yes"))
        slow = subprocess.Popen(
            setup.through.command(*patch, as_user=JONNY, namespace=NS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=setup.through.environment(),
        )
        running.append(slow)
        covered = ("patch", "pod", "red-two", "--type=json", "-p", add_label("fast", "no"))
        # The slow PATCH is under way (its lookup reached the API server) before the others.
        wait_held(setup, *held)
        others = [
            setup.through("get", "pods", namespace=NS),
            setup.through("label", "pod", "other-pod", "fast=yes", "--overwrite", namespace=NS),
            # Covered too: its own lookup is not queued behind the held one.
            setup.through(*covered, namespace=NS),  # denied
        ]
        assert others[0].returncode == 0, others[0].stderr
        assert others[1].returncode == 0, others[1].stderr
        assert "there is a lock" in others[2].stderr, others[2].stderr
        # All of them answered while the slow one is still waiting for its lookup.
        assert slow.poll() is None
        assert not gate.is_set()
    finally:
        setup.sandbox.release(gate)
    _, err = slow.communicate(timeout=HANG_GUARD)
    assert slow.returncode == 0, err
    labels = setup.admin.json("get", "pod", "my-pod", namespace=NS)["metadata"]["labels"]
    assert labels.get("slow") == "yes"


def wait_held(setup: Setup, method: str, path: str) -> None:
    """Until a request to ``method path`` is being held back by the sandbox."""
    thread = setup.sandbox.thread
    assert thread is not None
    for _ in range(int(HANG_GUARD / 0.05)):
        if thread.call(lambda: thread.sandbox.server.held_count.get((method, path), 0)):
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"no {method} {path} reached the API server")


IDLE_CLIENTS = 1000


def test_a_thousand_idle_clients_do_not_stop_new_ones(setup: Setup) -> None:
    host, _, port = setup.proxy.url.removeprefix("https://").rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(IDLE_CLIENTS):
            raw = socket.create_connection((host, int(port)), timeout=HANG_GUARD)
            try:
                idle.append(context.wrap_socket(raw, server_hostname=host))
            except BaseException:
                raw.close()
                raise
        result = setup.through("get", "pods", namespace=NS)
        assert result.returncode == 0, result.stderr
        assert "my-pod" in result.stdout
        ok = setup.through("label", "pod", "other-pod", "idle=1000", "--overwrite", namespace=NS)
        assert ok.returncode == 0, ok.stderr
        # The idle connections are still open (not dropped to make room).
        idle[0].settimeout(0.2)
        with pytest.raises(TimeoutError):
            idle[0].recv(1)
    finally:
        for sock in idle:
            sock.close()


def test_an_api_server_with_another_ca_gets_a_status_naming_tls_verification(
    setup: Setup, tmp_path: Path
) -> None:
    """The sandbox restarted without its state directory: a new CA the proxy does not trust."""
    setup.sandbox.stop()
    setup.sandbox.start(state_dir=tmp_path / "another-ca")
    try:
        for args in (("get", "pods"), ("label", "pod", "other-pod", "ca=new")):
            result = setup.through(*args, namespace=NS)
            assert_readable_failure(result, "the API server", "verify failed")
        # An HTTP/1.1 client (kubectl speaks HTTP/2) gets the Status too.
        host, _, port = setup.proxy.url.removeprefix("https://").rpartition(":")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=HANG_GUARD)
        try:
            conn.request(
                "GET",
                f"/api/v1/namespaces/{NS}/pods",
                headers={"Authorization": f"Bearer {setup.proxy.client_token}"},
            )
            answer = conn.getresponse()
            status = json.loads(answer.read())
        finally:
            conn.close()
        assert answer.status == 503
        assert answer.getheader("content-type") == "application/json"
        assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
        assert "verify failed" in status["message"]
    finally:
        setup.sandbox.stop()
        setup.sandbox.start()
        seed(setup.admin)


def test_an_api_server_that_never_answers_the_tls_handshake_gets_a_status(setup: Setup) -> None:
    """Something accepts connections on the API server's address and never answers the
    ClientHello (a wedged API server, a balancer without backends): kubectl gets a Status
    naming the handshake's timeout when it expires, instead of waiting for days."""
    proxy = setup.proxy
    proxy.call(lambda: proxy.service.update_options(klock_upstream_tls_timeout=2.0))
    setup.sandbox.stop()
    silent = socket.create_server(("127.0.0.1", setup.sandbox.port))
    held: list[socket.socket] = []

    def accept() -> None:
        # Accepts, never reads or writes, until the listening socket is closed.
        with contextlib.suppress(OSError):
            while True:
                held.append(silent.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        for args in (("get", "pods"), ("label", "pod", "other-pod", "tls=slow")):
            result = setup.through(*args, namespace=NS)
            assert_readable_failure(result, "TLS handshake within 2 s")
        assert held, "the proxy never connected"
    finally:
        silent.close()
        acceptor.join(HANG_GUARD)
        for sock in held:
            sock.close()
        proxy.call(lambda: proxy.service.update_options(klock_upstream_tls_timeout=10.0))
        setup.sandbox.start()
        seed(setup.admin)

    def labels() -> bool:
        ok = setup.through("label", "pod", "other-pod", "tls=back", namespace=NS)
        if ok.returncode != 0:
            assert_readable_failure(ok, "ServiceUnavailable")
        return ok.returncode == 0

    wait_until(labels, "a write through the proxy once the API server answers again")


def test_an_api_server_that_never_accepts_the_connection_gets_a_status(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server's address drops the connect (a firewall, a dead address): kubectl gets
    a Status naming the connect's deadline when it expires. Most new connections meet the
    addon's reachability probe first (a connect of its own, 5 s); the deadline covers those it
    skips, as here (the probe is made to trust the last connect)."""
    proxy = setup.proxy
    monkeypatch.setattr(addon_module, "PROBE_FRESH", 3600.0)
    proxy.call(lambda: proxy.service.update_options(klock_upstream_connect_timeout=2.0))
    warm = setup.through("get", "pods", namespace=NS)
    assert warm.returncode == 0, warm.stderr
    # No packet can be dropped on loopback: mitmproxy's connects to the API server (in this
    # process) are made to wait instead, as a connect to a dropping address waits.
    address = ("127.0.0.1", setup.sandbox.port)
    real = asyncio.open_connection

    async def dropped(host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        if (host, port) == address:
            await asyncio.Event().wait()
        return await real(host, port, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", dropped)
    try:
        result = setup.through("get", "pods", namespace=NS)
        assert_readable_failure(result, "did not accept a connection within 2 s")
        # That connect failed: the next new connection is probed first again, and the
        # probe's own timeout answers.
        result = setup.through("label", "pod", "other-pod", "connect=slow", namespace=NS)
        assert_readable_failure(result, "cannot be reached")
    finally:
        monkeypatch.setattr(asyncio, "open_connection", real)
        proxy.call(lambda: proxy.service.update_options(klock_upstream_connect_timeout=30.0))
    ok = setup.through("label", "pod", "other-pod", "connect=back", "--overwrite", namespace=NS)
    assert ok.returncode == 0, ok.stderr
