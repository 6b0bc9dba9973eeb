"""The ``klockproxy`` command: the front door to every mode.

Each subcommand lives in its own module, which provides ``configure_parser(parser)`` and
``run(args) -> int`` (the exit code); ``subcommands`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from klockproxy import __version__


class Subcommand(Protocol):
    """What a subcommand module provides."""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def subcommands() -> dict[str, tuple[Subcommand, str]]:
    """name -> (module, one-line help). The modules are imported here, when the parser is
    built, not when ``klockproxy.cli`` is; plain import statements, so the import-linter sees
    each edge. Each module imports what is heavy (mitmproxy, aiohttp) only where it is used,
    so ``klockproxy check`` does not pay for it."""
    from klockproxy import check, crd, demo
    from klockproxy.proxy import gateway, serve
    from klockproxy.sandbox import cli as sandbox
    from klockproxy.webhook import command as webhook

    return {
        "check": (check, "decide offline whether Locks allow an operation on objects"),
        "serve": (serve, "local mode: a Lock-enforcing proxy in front of a kubeconfig context"),
        "gateway": (
            gateway,
            "shared gateway: one Lock-enforcing proxy for a team, each caller with own credentials",
        ),
        "webhook": (
            webhook,
            "webhook mode: the same Locks enforced by a validating admission webhook",
        ),
        "demo": (
            demo,
            "the founding scenario on a sandbox behind the proxy, ready to try with kubectl",
        ),
        "crd": (crd, "print the Lock CustomResourceDefinition (kubectl apply -f -)"),
        "sandbox": (sandbox, "run the in-memory sandbox Kubernetes API server"),
    }


# Subcommands that serve traffic run under ``python -O``. mitmproxy type-checks every HTTP
# message it builds inside ``if __debug__:`` blocks (``mitmproxy.http.MessageData``): about a
# tenth of the proxy's CPU per request (see README, Measured performance). The package itself
# has no assert statements (ruff S101), so -O changes nothing of klockproxy's own behaviour.
# KLOCKPROXY_OPTIMIZE=0 keeps the interpreter as started.
OPTIMIZED_SUBCOMMANDS = frozenset({"serve", "gateway"})


def reexec_argv(argv: Sequence[str]) -> list[str] | None:
    """The command line that re-runs this one under ``python -O``; None when not wanted."""
    if sys.flags.optimize or not sys.executable:
        return None
    if os.environ.get("KLOCKPROXY_OPTIMIZE", "1") == "0":
        return None
    # Keep the interpreter options the user started with (-W warnings, -X options such as
    # tracemalloc or dev), only adding -O.
    options = [f"-W{w}" for w in sys.warnoptions]
    for key, value in sys._xoptions.items():
        options.append(f"-X{key}" if value is True else f"-X{key}={value}")
    return [sys.executable, *options, "-O", "-m", "klockproxy", *argv]


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO); credentials and bodies are never logged",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand configured)."""
    parser = argparse.ArgumentParser(
        prog="klockproxy",
        description="Enforce Klock Locks on the way to the Kubernetes API server.",
    )
    parser.add_argument("--version", action="version", version=f"klockproxy {__version__}")
    _add_log_level(parser, "INFO")
    # Also accepted after the subcommand (``klockproxy serve --log-level DEBUG``); SUPPRESS
    # keeps a value given before it unless it is given again.
    common = argparse.ArgumentParser(add_help=False)
    _add_log_level(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in subcommands().items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        module.configure_parser(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Only a real command line is re-executed: main(argv) called from Python (tests, other
    # programs) runs in place.
    if argv is None and args.command in OPTIMIZED_SUBCOMMANDS:
        command = reexec_argv(sys.argv[1:])
        if command is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(command[0], command)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args._run(args)
    return code
