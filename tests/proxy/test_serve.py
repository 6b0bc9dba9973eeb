"""`klockproxy serve`: the real command against a sandbox."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from klockproxy.core.errors import ConfigError
from klockproxy.proxy.serve import ProxyThread, ServeSettings, parse_listen
from klockproxy.sandbox.server import SandboxThread
from tests.e2e.kube import find_kubectl


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["host:http", "127.0.0.1:70000"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def _kubectl(kubeconfig: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    kubectl = find_kubectl()
    assert kubectl is not None, "kubectl is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    return subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", f"--cache-dir={home / 'cache'}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def served(
    tmp_path: Path, sandbox_thread: SandboxThread
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``klockproxy serve`` in front of the sandbox with a lock file; (process, ready line, OUT)."""
    locks = tmp_path / "locks.yaml"
    locks.write_text(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
        "metadata: {name: lockred, namespace: default}\n"
        "spec: {operations: [UPDATE, DELETE], matcher: {aura: red}}\n"
    )
    out = tmp_path / "proxy.kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "serve",
            f"--kubeconfig={sandbox_thread.sandbox.kubeconfig_path}",
            "--listen=127.0.0.1:0",
            f"--locks={locks}",
            f"--write-kubeconfig={out}",
            f"--state-dir={tmp_path / 'state'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        yield proc, line, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_serve_subprocess_end_to_end(
    served: tuple[subprocess.Popen[str], str, Path], tmp_path: Path
) -> None:
    proc, line, out = served
    assert line.startswith("klockproxy serving on https://127.0.0.1:"), line
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    if cmdline.exists():
        # Re-executed in place under python -O (same pid): mitmproxy's debug checks are off.
        assert cmdline.read_bytes().split(b"\0")[1] == b"-O"
    assert f"(kubeconfig: {out}, 1 lock from " in line
    home = tmp_path / "home"
    # The written kubeconfig is private and points at the proxy.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = yaml.safe_load(out.read_text())
    assert config["clusters"][0]["cluster"]["server"] == line.split()[3]

    created = _kubectl(out, home, "run", "my-pod", "--image=nginx", "--labels=aura=red")
    assert created.returncode == 0, created.stderr
    denied = _kubectl(out, home, "label", "pod", "my-pod", "here=was-admin")
    assert denied.returncode == 1
    assert "denied, there is a lock: map[aura:red]" in denied.stderr
    pod = json.loads(_kubectl(out, home, "get", "pod", "my-pod", "-o", "json").stdout)
    assert "here" not in pod["metadata"]["labels"]
    other = _kubectl(out, home, "run", "other-pod", "--image=nginx")
    assert other.returncode == 0, other.stderr
    labelled = _kubectl(out, home, "label", "pod", "other-pod", "aura=blue")
    assert labelled.returncode == 0, labelled.stderr

    # Without the proxy's token, or with another one: 401, whatever the path.
    config["users"][0]["user"]["token"] = "not-the-proxy-token"
    wrong = tmp_path / "wrong.kubeconfig"
    wrong.write_text(yaml.safe_dump(config))
    refused = _kubectl(wrong, home, "get", "pods")
    assert refused.returncode == 1
    assert "Unauthorized" in refused.stderr
    # No token at all (kubectl would prompt for a password, so ask over plain HTTPS).
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    host, port = line.split()[3].removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cadata=ca_pem.decode()), timeout=30
    )
    conn.request("GET", "/api/v1/namespaces/default/pods")
    resp = conn.getresponse()
    status = json.loads(resp.read())
    conn.close()
    assert resp.status == 401
    assert status["kind"] == "Status" and status["code"] == 401

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_serve_sigint_exits_cleanly(served: tuple[subprocess.Popen[str], str, Path]) -> None:
    proc, line, _ = served
    assert line.startswith("klockproxy serving on "), line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_serve_refuses_an_invalid_lock_file(sandbox_thread: SandboxThread, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: x}\n"
        "spec: {operations: [SMASH]}\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "serve",
            f"--kubeconfig={sandbox_thread.sandbox.kubeconfig_path}",
            "--listen=127.0.0.1:0",
            f"--locks={bad}",
            f"--write-kubeconfig={tmp_path / 'out'}",
            f"--state-dir={tmp_path / 'state'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "spec.operations" in result.stderr
    assert not (tmp_path / "out").exists()


def test_proxy_thread_forwards_with_a_client_certificate(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    """A kubeconfig user with a client certificate: the proxy presents it upstream, and the
    caller's identity (kubectl auth whoami) is the certificate's, or the impersonated one."""
    user = sandbox_thread.sandbox.client_certificate_user("cert-admin", ["system:masters"])
    kc = sandbox_thread.write_kubeconfig(tmp_path / "cert.kubeconfig", users={"cert": user})
    settings = ServeSettings(
        write_kubeconfig=tmp_path / "out.kubeconfig",
        kubeconfig=str(kc),
        listen="127.0.0.1:0",
        locks=(),
        state_dir=tmp_path / "state",
    )
    with ProxyThread(settings) as proxy:
        assert proxy.service.ready_line().endswith(
            "(kubeconfig: " + str(proxy.kubeconfig_path) + ", no lock source)"
        )
        home = tmp_path / "home"
        who = _kubectl(proxy.kubeconfig_path, home, "auth", "whoami", "-o", "json")
        assert who.returncode == 0, who.stderr
        assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "cert-admin"
        who = _kubectl(proxy.kubeconfig_path, home, "--as=someone", "auth", "whoami", "-o", "json")
        assert who.returncode == 0, who.stderr
        assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "someone"
        created = _kubectl(proxy.kubeconfig_path, home, "create", "configmap", "via-cert")
        assert created.returncode == 0, created.stderr
    # Stopped: the per-run copies of the credentials are gone from the state directory.
    assert not list((tmp_path / "state").glob("run-*"))


def test_serve_says_when_the_address_is_taken(
    sandbox_thread: SandboxThread, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "klockproxy",
                "serve",
                f"--kubeconfig={sandbox_thread.sandbox.kubeconfig_path}",
                f"--listen=127.0.0.1:{port}",
                "--locks",
                "cluster",
                f"--write-kubeconfig={tmp_path / 'out'}",
                f"--state-dir={tmp_path / 'state'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"klockproxy: cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_master_does_not_import_every_default_addon() -> None:
    """mitmproxy's addons package is made bare (its __init__ imports every default addon):
    a master starts and relays with the four addons it uses, and the others (the onboarding
    web app, proxy auth, the flow filters' blocklist) are never imported."""
    import subprocess
    import sys

    code = """
import asyncio, sys, tempfile
from pathlib import Path
from klockproxy.proxy.master import start_master

async def main():
    running = await start_master(host="127.0.0.1", port=0,
        upstream_server="https://127.0.0.1:9", confdir=Path(tempfile.mkdtemp()) / "m",
        addons=[], options={})
    print(running.url.startswith("https://127.0.0.1:"))
    await running.stop()

asyncio.run(main())
print(sorted(m for m in ("mitmproxy.addons.onboarding", "mitmproxy.addons.proxyauth",
    "mitmproxy.addons.blocklist") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "[]"], out.stderr
