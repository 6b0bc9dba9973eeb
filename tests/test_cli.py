"""The front door: subcommands, and `serve` re-run under `python -O`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from klockproxy import cli


class _Execed(Exception):
    """Raised by the stand-in for os.execv: the process would have been replaced."""


def _fake_execv(path: str, argv: list[str]) -> None:
    raise _Execed(argv)


def test_serve_from_the_command_line_is_re_executed_under_python_O(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli.os, "execv", _fake_execv)
    monkeypatch.delenv("KLOCKPROXY_OPTIMIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["klockproxy", "serve", "--write-kubeconfig", "out"])
    monkeypatch.setattr(sys, "warnoptions", [])
    monkeypatch.setattr(sys, "_xoptions", {})
    with pytest.raises(_Execed) as raised:
        cli.main()
    assert raised.value.args[0] == [
        sys.executable,
        "-O",
        "-m",
        "klockproxy",
        "serve",
        "--write-kubeconfig",
        "out",
    ]


def test_re_execution_keeps_the_interpreter_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLOCKPROXY_OPTIMIZE", raising=False)
    monkeypatch.setattr(sys, "warnoptions", ["error::DeprecationWarning"])
    monkeypatch.setattr(sys, "_xoptions", {"tracemalloc": "5", "dev": True})
    assert cli.reexec_argv(["serve"]) == [
        sys.executable,
        "-Werror::DeprecationWarning",
        "-Xtracemalloc=5",
        "-Xdev",
        "-O",
        "-m",
        "klockproxy",
        "serve",
    ]


def test_no_re_execution_when_asked_not_to_or_called_from_python(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.os, "execv", _fake_execv)
    monkeypatch.setenv("KLOCKPROXY_OPTIMIZE", "0")
    assert cli.reexec_argv(["serve"]) is None
    monkeypatch.delenv("KLOCKPROXY_OPTIMIZE")
    assert cli.reexec_argv(["serve"]) is not None
    # main(argv) from Python runs in place (here: the listen address is refused, exit 2).
    code = cli.main(["serve", "--write-kubeconfig", "out", "--listen", "nowhere"])
    assert code == 2
    assert "klockproxy:" in capsys.readouterr().err


def test_other_subcommands_are_not_re_executed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "execv", _fake_execv)
    monkeypatch.setattr(sys, "argv", ["klockproxy", "crd"])
    assert cli.main() == 0


def test_check_gives_the_same_verdicts_under_python_O(tmp_path: Path) -> None:
    """With asserts stripped (-O), the core decides exactly as before: denial and allowance."""
    locks = tmp_path / "locks.yaml"
    locks.write_text(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
        "metadata: {name: lockred, namespace: default}\n"
        "spec: {operations: [UPDATE, DELETE], matcher: {aura: red}, "
        "exclusive: {name: jonny-op}}\n"
    )
    objects = tmp_path / "pod.yaml"
    objects.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: my-pod, labels: {aura: red}}\n")
    outcomes = []
    for flags in ([], ["-O"]):
        for user in ("admin", "system:serviceaccount:default:jonny-op"):
            run = subprocess.run(
                [
                    sys.executable,
                    *flags,
                    "-m",
                    "klockproxy",
                    "check",
                    f"--locks={locks}",
                    f"--as={user}",
                    "--operation=DELETE",
                    f"-f={objects}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            outcomes.append((run.returncode, run.stdout, run.stderr))
    plain, optimized = outcomes[:2], outcomes[2:]
    assert plain == optimized
    assert plain[0][0] != 0 and "lockred" in plain[0][1] + plain[0][2]
    assert plain[1][0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "crd"],
        ["crd", "--log-level", "DEBUG"],
    ],
)
def test_log_level_is_accepted_before_and_after_the_subcommand(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    levels: list[object] = []
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    assert cli.main(argv) == 0
    assert levels == ["DEBUG"]


def test_log_level_after_the_subcommand_wins_and_the_default_stays_info(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    levels: list[object] = []
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    assert cli.main(["crd"]) == 0
    assert cli.main(["--log-level", "ERROR", "crd", "--log-level", "WARNING"]) == 0
    assert levels == ["INFO", "WARNING"]


def test_serve_log_level_after_the_subcommand_from_the_shell(tmp_path: Path) -> None:
    # The real command line (re-executed under -O): the flag is not refused, and the run
    # fails further on, at the missing kubeconfig it names.
    missing = tmp_path / "nope.kubeconfig"
    result = subprocess.run(
        [sys.executable, "-m", "klockproxy", "serve", "--log-level", "DEBUG",
         "--kubeconfig", str(missing), "--write-kubeconfig", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "unrecognized arguments" not in result.stderr
    assert result.returncode != 0, result.stderr
    assert f"kubeconfig {missing}: the file does not exist" in result.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["serve", "--listen", "x"], "serve"),
        (["--log-level", "DEBUG", "serve"], "serve"),
        (["--log-level=DEBUG", "gateway"], "gateway"),
        (["--log", "INFO", "crd"], "crd"),
        (["--help", "serve"], None),
        (["--version"], None),
        (["nonsense"], None),
        ([], None),
    ],
)
def test_the_subcommand_is_found_before_the_parser_is_built(
    argv: list[str], command: str | None
) -> None:
    """``serve`` is re-executed under -O before its modules are imported; when unsure, the
    full parser decides (and still re-executes)."""
    assert cli.command_in(argv) == command


def test_every_subcommand_module_is_an_import_the_linter_sees() -> None:
    """The table ``load`` imports from names exactly the modules cli.py imports for the
    import-linter (under TYPE_CHECKING), and each provides configure_parser and run."""
    import ast
    import inspect

    from klockproxy import cli

    tree = ast.parse(inspect.getsource(cli))
    seen: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                seen |= {f"{imp.module}.{alias.name}" for alias in imp.names}
    assert seen == {module for module, _ in cli.SUBCOMMANDS.values()}
    for name in cli.SUBCOMMANDS:
        module = cli.load(name)
        assert callable(module.configure_parser)
        assert callable(module.run)


def test_a_serving_command_imports_only_its_own_module() -> None:
    """``klockproxy serve`` builds its parser without importing the webhook or the sandbox."""
    import subprocess
    import sys

    code = (
        "import sys; from klockproxy import cli; cli.build_parser(only='serve'); "
        "print(sorted(m for m in sys.modules if m.startswith(('klockproxy.webhook', "
        "'klockproxy.sandbox', 'klockproxy.demo'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
