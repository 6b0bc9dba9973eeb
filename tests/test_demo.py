"""`klockproxy demo`: run it, then run the kubectl commands it prints, as printed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kube import find_kubectl


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """The demo process and the lines it printed up to (and including) the Ctrl-C hint."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "demo",
            "--listen=127.0.0.1:0",
            f"--state-dir={tmp_path / 'state'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C"):
                break
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_demo_prints_commands_that_do_what_they_say(
    demo: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
) -> None:
    proc, lines = demo
    assert lines and lines[0].startswith("klockproxy serving on https://127.0.0.1:"), lines
    assert "1 lock from cluster" in lines[0]
    exports = [ln.strip() for ln in lines if ln.strip().startswith("export KUBECONFIG=")]
    assert len(exports) == 1
    kubeconfig = exports[0].removeprefix("export KUBECONFIG=")
    assert Path(kubeconfig).is_absolute() and Path(kubeconfig).exists()

    commands = [ln.strip() for ln in lines if ln.strip().startswith("kubectl ")]
    assert len(commands) >= 8
    kubectl = find_kubectl()
    assert kubectl is not None, "kubectl is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(tmp_path / "home")
    env["KUBECONFIG"] = kubeconfig

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([kubectl, *argv], capture_output=True, text=True, env=env, timeout=60)

    outcomes = []
    for command in commands:
        text, _, expected = command.partition("#")
        expected = expected.strip()
        assert expected in ("allowed", "denied"), command
        result = run(shlex.split(text)[1:])
        outcomes.append((text.strip(), expected))
        if expected == "allowed":
            assert result.returncode == 0, f"{text}: {result.stderr}"
        else:
            assert result.returncode == 1, f"{text}: {result.stdout}"
            assert "denied, there is a lock: map[aura:red]" in result.stderr
            assert "default/lockred" in result.stderr
    # The story the commands tell, in order: admin refused, jonny-op allowed, lock removed.
    assert [e for _, e in outcomes].count("denied") == 3

    # The objects in the API server afterwards (read through the proxy: reads always pass).
    pod = json.loads(run(["get", "pod", "my-pod", "-o", "json"]).stdout)
    assert pod["metadata"]["labels"]["here"] == "was-admin"
    cm = json.loads(run(["get", "cm", "my-cm", "-o", "json"]).stdout)
    assert cm["metadata"]["labels"] == {"aura": "red", "x": "jonny"}
    other = json.loads(run(["get", "pod", "other-pod", "-o", "json"]).stdout)
    assert other["metadata"]["labels"]["aura"] == "blue"

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def _demo_command(listen: str, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "klockproxy", "demo", f"--listen={listen}",
            f"--state-dir={state_dir}"]  # fmt: skip


def _state(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir()) if p.is_file()}


# (Another state directory and another port: two independent demos, both may run.)
@pytest.mark.parametrize(
    ("same_state_dir", "same_port"),
    [(True, True), (True, False), (False, True)],
    ids=["same-state-same-port", "same-state-other-port", "other-state-same-port"],
)
def test_a_second_demo_that_cannot_start_leaves_the_first_alone(
    demo: tuple[subprocess.Popen[str], list[str]],
    tmp_path: Path,
    same_state_dir: bool,
    same_port: bool,
) -> None:
    proc, lines = demo
    url = lines[0].removeprefix("klockproxy serving on ").split()[0]
    port = url.rsplit(":", 1)[1]
    first_state = tmp_path / "state"
    before = _state(first_state)
    state_dir = first_state if same_state_dir else tmp_path / "second"
    second = subprocess.run(
        _demo_command(f"127.0.0.1:{port}" if same_port else "127.0.0.1:0", state_dir),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert "--mode" not in output and "reverse:" not in output, output
    if same_state_dir:
        assert "another klockproxy demo" in output, output
    else:
        assert f"127.0.0.1:{port}" in output and "in use" in output, output
    # The running demo's files (admin kubeconfig, CA, token, proxy kubeconfig) are untouched,
    # and it still serves.
    assert _state(first_state) == before
    assert proc.poll() is None
    kubectl = find_kubectl()
    assert kubectl is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(tmp_path / "home")
    for kubeconfig in ("kubeconfig", "sandbox-admin.kubeconfig"):
        got = subprocess.run(
            [kubectl, "--kubeconfig", str(first_state / kubeconfig), "get", "pod", "my-pod"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
