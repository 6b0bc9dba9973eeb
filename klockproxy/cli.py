"""The ``klockproxy`` command: the front door to every mode.

Each subcommand lives in its own module, which provides ``configure_parser(parser)`` and
``run(args) -> int`` (the exit code); ``SUBCOMMANDS`` lists them, ``load`` imports one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from klockproxy import __version__


class Subcommand(Protocol):
    """What a subcommand module provides."""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


if TYPE_CHECKING:
    # The edges the import-linter checks (it reads these too); at run time each module is
    # imported by ``load`` only when its subcommand runs.
    from klockproxy import check, crd, demo  # noqa: F401
    from klockproxy.proxy import gateway, serve  # noqa: F401
    from klockproxy.sandbox import cli  # noqa: F401
    from klockproxy.webhook import command  # noqa: F401

# name -> (module, one-line help), in the order ``klockproxy --help`` lists them; the modules
# are those imported above (a test holds the two lists together).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": ("klockproxy.check", "decide offline whether Locks allow an operation on objects"),
    "serve": (
        "klockproxy.proxy.serve",
        "local mode: a Lock-enforcing proxy in front of a kubeconfig context",
    ),
    "gateway": (
        "klockproxy.proxy.gateway",
        "shared gateway: one Lock-enforcing proxy for a team, each caller with own credentials",
    ),
    "webhook": (
        "klockproxy.webhook.command",
        "webhook mode: the same Locks enforced by a validating admission webhook",
    ),
    "demo": (
        "klockproxy.demo",
        "the founding scenario on a sandbox behind the proxy, ready to try with kubectl",
    ),
    "crd": ("klockproxy.crd", "print the Lock CustomResourceDefinition (kubectl apply -f -)"),
    "sandbox": ("klockproxy.sandbox.cli", "run the in-memory sandbox Kubernetes API server"),
}


def load(name: str) -> Subcommand:
    """The module of one subcommand, imported now and only it: ``klockproxy check`` does not
    pay for mitmproxy or aiohttp, ``klockproxy serve`` not for the webhook or the sandbox."""
    module: Subcommand = importlib.import_module(SUBCOMMANDS[name][0])
    return module


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


def _reexec(argv: Sequence[str]) -> None:
    """Replace this process with ``reexec_argv(argv)``, if wanted."""
    command = reexec_argv(argv)
    if command is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO); credentials and bodies are never logged",
    )


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand a command line names, found without building the parser (which
    imports every subcommand's module): the first word that is neither an option nor the
    value of ``--log-level``. None when unsure (help, version, an unknown option): then the
    full parser decides."""
    words = iter(argv)
    for word in words:
        if word.startswith("--log"):
            if "=" not in word:
                next(words, None)  # its value (argparse accepts any prefix of --log-level)
        elif word.startswith("-"):
            return None
        else:
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser (every subcommand configured); with ``only``, just that
    subcommand's module is imported and configured (the others are listed, without their
    options): ``klockproxy serve`` does not pay for importing the webhook or the sandbox."""
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
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if only is None or name == only:
            module = load(name)
            module.configure_parser(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    only = command_in(words)
    # Only a real command line is re-executed: main(argv) called from Python (tests, other
    # programs) runs in place. Re-executed before the parser is built: building it imports
    # the subcommand's modules (a third of a second for serve), which the re-executed
    # interpreter imports again; it parses the arguments (and reports their errors) itself.
    if argv is None and only in OPTIMIZED_SUBCOMMANDS:
        _reexec(words)
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if not hasattr(args, "_run"):
        # ``command_in`` read another subcommand than argparse did: parse with all of them.
        parser = build_parser()
        args = parser.parse_args(argv)
    if argv is None and args.command in OPTIMIZED_SUBCOMMANDS:
        _reexec(words)  # a command line ``command_in`` could not read
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args._run(args)
    return code
