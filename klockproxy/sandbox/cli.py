"""``klockproxy sandbox``: run the sandbox API server until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from klockproxy.core.errors import ConfigError, KlockProxyError

logger = logging.getLogger(__name__)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _service_address(value: str) -> tuple[str, str]:
    key, sep, address = value.partition("=")
    namespace, slash, name = key.partition("/")
    if not sep or not slash or not namespace or not name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME=HOST:PORT, got {value!r}")
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME=HOST:PORT, got {value!r}")
    return key, address


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 6443),
        metavar="HOST:PORT",
        help="address to serve HTTPS on (default 127.0.0.1:6443; port 0 picks a free one)",
    )
    parser.add_argument(
        "--write-kubeconfig",
        type=Path,
        required=True,
        metavar="PATH",
        help="write a kubeconfig here: the sandbox CA, one context per known user (admin current)",
    )
    parser.add_argument(
        "--tokens",
        type=Path,
        metavar="FILE",
        help="static tokens in the API server's --token-auth-file format "
        '(token,user,uid,"group1,group2")',
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep the CA, admin token and signing key here so kubeconfigs survive restarts",
    )
    parser.add_argument(
        "--service-address",
        type=_service_address,
        action="append",
        default=[],
        metavar="NAMESPACE/NAME=HOST:PORT",
        help="where to reach the Service an admission webhook's clientConfig.service names "
        "(repeatable); its certificate must still be valid for NAME.NAMESPACE.svc",
    )
    parser.add_argument(
        "--http2",
        action="store_true",
        help="serve HTTP/2 (and HTTP/1.1) through the HTTP/2 front, like a real API server; "
        "bearer tokens only (client certificates are not forwarded)",
    )


async def _serve(args: argparse.Namespace) -> None:
    from klockproxy.sandbox.server import Sandbox

    host, port = args.listen
    sandbox = Sandbox(
        host,
        port,
        tokens_file=args.tokens,
        state_dir=args.state_dir,
        http2=args.http2,
        service_addresses=dict(args.service_address),
    )
    await sandbox.start()
    try:
        path = sandbox.write_kubeconfig(args.write_kubeconfig)
        print(
            f"klockproxy sandbox ready on {sandbox.url}; kubeconfig {path} "
            f"(contexts: {', '.join(sandbox.known_users())})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(args))
    except (ConfigError, KlockProxyError, OSError) as e:
        print(f"klockproxy sandbox: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
