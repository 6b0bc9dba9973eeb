"""Starting ``klockproxy sandbox`` as a process for the tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--write-kubeconfig",
            str(tmp_path / "kubeconfig"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
