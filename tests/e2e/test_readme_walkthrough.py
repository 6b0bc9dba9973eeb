"""The README's local-mode walkthrough (the block after ``<!-- walkthrough -->``), run as
written: every line in bash, in a fresh directory and HOME, with real kubectl.

Only the two ports are changed (to free ones, so parallel runs do not collide); the servers
started with ``&`` are started here instead, waiting for their ready line. A line commented
``# denied`` must be refused by a Lock; every other line must succeed.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kube import stop_process

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- walkthrough -->"
PORTS = ("127.0.0.1:6443", "127.0.0.1:8443")
READY_GUARD = 60.0  # only against a hang
DENIED = "denied, there is a lock"


def walkthrough() -> list[str]:
    """The commands of the walkthrough block (a heredoc kept as one command)."""
    text = README.read_text()
    start = text.index(MARK)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None, "no ```sh block after the walkthrough mark"
    commands: list[str] = []
    heredoc: list[str] | None = None
    for line in block.group(1).splitlines():
        if heredoc is not None:
            heredoc.append(line)
            if line == "EOF":
                commands.append("\n".join(heredoc))
                heredoc = None
        elif "<<'EOF'" in line:
            heredoc = [line]
        elif line.strip():
            commands.append(line)
    assert heredoc is None, "unterminated heredoc"
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def first_line(proc: subprocess.Popen[str]) -> str:
    """The process's first stdout line (fails if it ends or stays silent too long)."""
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        out.put(proc.stdout.readline())

    threading.Thread(target=read, daemon=True).start()
    try:
        line = out.get(timeout=READY_GUARD)
    except queue.Empty:
        raise AssertionError(f"{proc.args} printed no ready line") from None
    assert line, f"{proc.args} ended without a ready line (see its log)"
    return line


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in reversed(procs):
        stop_process(proc)


def test_the_readme_walkthrough_works_as_written(
    tmp_path: Path, servers: list[subprocess.Popen[str]]
) -> None:
    commands = walkthrough()
    assert any(c.startswith("klockproxy crd") for c in commands)
    ports = {old: f"127.0.0.1:{free_port()}" for old in PORTS}
    bindir = str(Path(sys.executable).parent)  # klockproxy and kubectl of this environment
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    for command in commands:
        for old, new in ports.items():
            command = command.replace(old, new)
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").split("#")[0].strip().partition("=")
            env[name] = value
            continue
        if command.endswith("&"):
            # Its log goes to a file: an undrained pipe would block it once full.
            with open(tmp_path / f"server-{len(servers)}.log", "w") as log:
                proc = subprocess.Popen(
                    shlex.split(command.removesuffix("&")),
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            servers.append(proc)
            line = first_line(proc)
            assert any(f"https://{new}" in line for new in ports.values()), line
            continue
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "# denied" in command:
            assert result.returncode != 0, f"{command}\n{result.stdout}"
            assert DENIED in result.stderr, f"{command}\n{result.stderr}"
        else:
            assert result.returncode == 0, f"{command}\n{result.stderr}"
    # The last write went through the proxy to the sandbox.
    final = subprocess.run(
        ["kubectl", "get", "pod", "my-pod", "-o", "jsonpath={.metadata.labels.here}"],
        cwd=tmp_path,
        env={**env, "KUBECONFIG": "sandbox.kubeconfig"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert final.stdout == "was-admin"
