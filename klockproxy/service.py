"""What every long-running command shares (``serve``, ``gateway``, ``webhook``).

The options that mean the same in each; start the service, print one ready line, serve
until SIGINT or SIGTERM, stop it; the per-run private directory in the state directory;
keeping an exec plugin's token file current. It knows no mode: the modes import it, never
the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
    TextIO,
    TypeVar,
    get_origin,
    get_type_hints,
)

from klockproxy.cluster.kubeconfig import OwnCredentials
from klockproxy.cluster.private_files import write_private
from klockproxy.core.errors import ConfigError, KlockProxyError
from klockproxy.loop_thread import cancel

if TYPE_CHECKING:
    from klockproxy.cluster.lock_sources import LockSet

logger = logging.getLogger(__name__)

# How often to ask the kubeconfig's credential plugin whether its token needs renewing.
TOKEN_REFRESH_INTERVAL = 30.0
# Where a listen address that names no host listens: local mode and the gateway on loopback
# (a proxy holding credentials is not offered to the network unless asked), the webhook on
# every interface (the API server calls it from elsewhere).
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
# How long to wait for the lock sources before announcing readiness anyway (what the Locks
# guard is refused until they are ready: fail closed).
LOCKS_READY_TIMEOUT = 10.0


def parse_listen(
    value: str, option: str = "--listen", *, default_host: str = LOOPBACK
) -> tuple[str, int]:
    """``HOST:PORT`` / ``[::1]:PORT`` / ``:PORT`` / ``PORT`` -> (host, port); a missing host is
    ``default_host``. Raises ConfigError naming ``option``."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or default_host
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"{option} {value!r}: expected HOST:PORT (the port is not a number)")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{option} {value!r}: expected HOST:PORT (the port is out of range)")
    return host, port


class Service(Protocol):
    """A long-running command's service: ready once ``start`` returns, then ``stop``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready_line(self) -> str:
        """The one line printed once it accepts connections."""
        ...


class StartedOrStopped(ABC):
    """``start()`` runs ``_start()``; if that fails, ``stop()`` releases whatever it had
    started (ports, tasks, per-run files) before the error goes on.

    ``_start`` hands each thing it starts to ``releases`` (an AsyncExitStack) as it goes:
    ``stop()`` releases them the last first, so the teardown order is the start order
    reversed, by construction, and a half-done start is undone as far as it got.
    """

    _releases: AsyncExitStack | None = None

    @property
    def releases(self) -> AsyncExitStack:
        """What ``stop()`` will release (``callback``, ``push_async_callback``)."""
        if self._releases is None:
            self._releases = AsyncExitStack()
        return self._releases

    async def start(self) -> None:
        """Start serving (ready when it returns); raises ConfigError (or another
        KlockProxyError) with a message fit for the user."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    @abstractmethod
    async def _start(self) -> None: ...

    async def stop(self) -> None:
        """Stop serving and release everything (safe to call after a failed start, and
        twice)."""
        releases, self._releases = self._releases, None
        if releases is not None:
            await releases.aclose()

    def private_run_dir(self, state_dir: Path) -> Path:
        """``make_run_dir(state_dir)``, removed again by ``stop()``."""
        run_dir = make_run_dir(state_dir)
        self.releases.callback(shutil.rmtree, run_dir, ignore_errors=True)
        return run_dir

    def keep_token_fresh(
        self, refresh: Callable[[], str | None] | None, token_file: str | None, whose: str
    ) -> None:
        """Where an exec plugin (``refresh``) hands out expiring tokens kept in
        ``token_file``, keep the file current until ``stop()`` (``refresh_token_file``)."""
        if refresh is None or not token_file:
            return
        task = asyncio.create_task(
            refresh_token_file(refresh, Path(token_file), whose), name="klockproxy-token-refresh"
        )
        self.releases.push_async_callback(cancel, task)


async def wait_for_locks(lock_set: LockSet, timeout: float, meanwhile: str) -> None:
    """Give the lock sources ``timeout`` seconds to load; past that, serve anyway and say
    what happens until they are ready (``meanwhile``: "mutations are refused": fail closed)."""
    if not await lock_set.wait_ready(timeout):
        logger.warning("lock sources not ready after %.0f s: %s until they are", timeout, meanwhile)


def make_run_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` (0700) and in it a fresh private directory for this run's copies
    of credentials (the caller removes it at exit). ConfigError when that is impossible."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix="run-", dir=state_dir))
    except OSError as e:
        raise ConfigError(f"cannot use state directory {state_dir}: {e}") from e


async def refresh_token_file(
    refresh: Callable[[], str | None],
    path: Path,
    whose: str,
    interval: float = TOKEN_REFRESH_INTERVAL,
) -> None:
    """Keep the token file at ``path`` current: ask ``refresh`` (an exec credential plugin)
    every ``interval`` seconds and rewrite the file when the token changed. Whoever sends
    with it re-reads the file when it changes. ``whose`` names the credentials in logs."""
    current = path.read_text().strip()
    while True:
        await asyncio.sleep(interval)
        try:
            token = await asyncio.to_thread(refresh)
        except Exception as e:
            logger.warning("refreshing %s failed: %s", whose, type(e).__name__)
            continue
        if token and token != current:
            write_private(path, token.encode())
            current = token
            logger.info("%s refreshed", whose)


async def serve_until_signal(
    service: Service, *, out: TextIO | None = None, announce: str = ""
) -> int:
    """Start ``service``, print its ready line (then ``announce``, if any) to ``out``
    (standard output by default), serve until SIGINT/SIGTERM, stop it; the exit code (1 when
    it could not start, the reason on standard error)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await service.start()
        except (KlockProxyError, OSError) as e:
            print(f"klockproxy: {e}", file=sys.stderr)
            return 1
        stream = sys.stdout if out is None else out
        print(service.ready_line(), file=stream, flush=True)
        if announce:
            print(announce, file=stream, flush=True)
        await stop.wait()
        logger.info("stopping")
        await service.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_service(make: Callable[[], Service], *, out: TextIO | None = None) -> int:
    """A long-running command: build its service from the arguments (exit 2 on a
    ConfigError: the arguments are wrong), then ``serve_until_signal`` (exit 0, or 1 when it
    failed, the reason on standard error)."""
    try:
        service = make()
    except ConfigError as e:
        print(f"klockproxy: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_until_signal(service, out=out))
    except KlockProxyError as e:
        print(f"klockproxy: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------
# The options every long-running command shares, and its settings from them


@dataclass(frozen=True)
class OptionTexts:
    """How the shared options describe one mode in its ``--help`` (``add_service_options``):
    each mode's class holds its own, beside the code that does what they say."""

    serves: str  # what --listen serves
    credentials: OwnCredentials  # where the credentials come from without --kubeconfig
    ready: str = ""  # when /readyz says ready (ServedSettings only)


@dataclass(kw_only=True)
class ServiceSettings:
    """What every long-running command is told (``add_service_options`` declares the
    options); each mode's settings add their own fields and a default for ``listen``."""

    listen: str  # each mode has its own default
    kubeconfig: str | None = None
    context: str | None = None
    locks: Sequence[str] = ("cluster",)
    audit_log: str | None = None
    default_namespace: str = "default"
    locks_ready_timeout: float = LOCKS_READY_TIMEOUT


@dataclass(kw_only=True)
class ServedSettings(ServiceSettings):
    """A service other machines call (the gateway, the webhook): its serving certificate and
    health port (``add_served_options``)."""

    tls_cert: str | None = None
    tls_key: str | None = None
    health_listen: str | None = None


S = TypeVar("S", bound=ServiceSettings)


def add_service_options(
    parser: argparse.ArgumentParser, settings: type[ServiceSettings], texts: OptionTexts
) -> None:
    """The options of ``settings``'s fields that every service shares, worded by the mode's
    ``texts``: ``--kubeconfig`` (where the credentials come from without it),
    ``--context``, ``--listen`` (what it serves; default: the field's), ``--locks``,
    ``--audit-log`` (one line per judged thing); for ServedSettings also ``--tls-cert``,
    ``--tls-key`` and ``--health-listen`` (when /readyz says ready)."""
    listen = next(f.default for f in fields(settings) if f.name == "listen")
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help=f"kubeconfig to read (default: {texts.credentials.value})",
    )
    parser.add_argument("--context", metavar="NAME", help="context to use (default: current)")
    parser.add_argument(
        "--listen",
        default=listen,
        metavar="HOST:PORT",
        help=f"where to serve {texts.serves} (default {listen})",
    )
    parser.add_argument(
        "--locks",
        nargs="+",
        action="extend",
        metavar="cluster|PATH",
        help="where Locks come from: 'cluster' (watch Lock objects) and/or lock files or "
        "directories (reloaded on change); default: cluster",
    )
    parser.add_argument(
        "--audit-log",
        metavar="PATH|-",
        help="append one JSON line per judged request here ('-': standard output)",
    )
    if issubclass(settings, ServedSettings):
        parser.add_argument("--tls-cert", metavar="FILE", help="serving certificate (PEM)")
        parser.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert (PEM)")
        parser.add_argument(
            "--health-listen",
            metavar="HOST:PORT",
            help=f"serve /healthz, /readyz (ready {texts.ready}) and /metrics over plain HTTP here",
        )


def add_state_dir_option(parser: argparse.ArgumentParser, default: str, keeps: str) -> None:
    """``--state-dir DIR`` (default ``default``): where the command keeps ``keeps``."""
    parser.add_argument(
        "--state-dir", default=default, metavar="DIR", help=f"where {keeps} (default {default})"
    )


def settings_from_options(cls: type[S], args: argparse.Namespace, **given: Any) -> S:
    """``cls`` from parsed arguments: each field from the option of its name (an option not
    given keeps the field's default, a Path field is expanded, a Sequence made a tuple);
    ``given`` names what a mode converts itself. ConfigError for a listen address that does
    not parse."""
    types = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
            continue
        value = getattr(args, f.name, None)
        if value is None:  # not an option of this mode, or not given
            continue
        if types[f.name] is Path:
            value = Path(value).expanduser()
        elif get_origin(types[f.name]) is Sequence:
            value = tuple(value)
        values[f.name] = value
    settings = cls(**values)
    parse_listen(settings.listen)
    if isinstance(settings, ServedSettings) and settings.health_listen:
        parse_listen(settings.health_listen, "--health-listen")
    return settings
