"""The embedded mitmproxy: a bare ``Master`` carrying only what a reverse proxy needs.

Local mode and the gateway both run mitmproxy this way (about 1.6x the request rate of
``DumpMaster``): core, proxyserver, next_layer and tlsconfig, plus the caller's addons.
``start_master`` returns once the server listens, with the URL it is reachable at.
``ProxyService`` is what the two modes' services share around it: the lock set, and
mitmproxy started last with the options and the TLS addon every proxy mode has.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

from klockproxy.cluster.lock_sources import LockSet, create_lock_sources
from klockproxy.core.errors import ConfigError
from klockproxy.service import (
    Service,
    ServiceSettings,
    StartedOrStopped,
    run_service,
    settings_from_options,
    wait_for_locks,
)

if TYPE_CHECKING:
    from klockproxy.cluster.upstream import Upstream, UpstreamConfig

logger = logging.getLogger(__name__)


def klock_options(
    serving_pem: Path, upstream: UpstreamConfig, locks: Sequence[str], default_namespace: str
) -> dict[str, Any]:
    """The options local mode and the gateway both set: serve ``serving_pem``, reach the API
    server of ``upstream`` (its CA verified), judge by ``locks``."""
    options: dict[str, Any] = {
        "certs": [f"*={serving_pem}"],
        # We serve our own certificate: no need to peek at the upstream one first.
        "upstream_cert": False,
        "connection_strategy": "lazy",
        "ssl_insecure": upstream.insecure,
        "klock_locks": list(locks),
        "klock_default_namespace": default_namespace,
        "klock_upstream": upstream.server,
    }
    if upstream.ca_file:
        options["ssl_verify_upstream_trusted_ca"] = upstream.ca_file
    return options


def cert_hosts(host: str) -> list[str]:
    """The names a serving certificate for ``host`` must cover (plus the loopback names)."""
    hosts = [host] if host not in ("0.0.0.0", "::", "") else []
    for extra in ("localhost", "127.0.0.1", "::1"):
        if extra not in hosts:
            hosts.append(extra)
    return hosts


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (a wildcard address becomes loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def quiet_mitmproxy_logging() -> None:
    """mitmproxy logs every connection at INFO; keep its warnings and errors only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)


S = TypeVar("S", bound=ServiceSettings)


def run_proxy(
    make: Callable[[S], Service],
    settings: type[S],
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
) -> int:
    """A proxy command (``serve``, ``gateway``): ``run_service`` of ``make`` over the
    ``settings`` parsed from ``args``, with mitmproxy's own logging quieted."""
    quiet_mitmproxy_logging()
    return run_service(lambda: make(settings_from_options(settings, args)), out=out)


class _DropListenFailures(logging.Filter):
    """mitmproxy logs a failed listen with a hint to use ``--mode reverse:...@PORT``, a flag
    klockproxy does not have; ``start_master`` reports the failure itself (ConfigError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to listen" not in record.getMessage()


_LISTEN_FILTER = _DropListenFailures()


def _bind_error(exc: BaseException | None) -> str:
    # mitmproxy's own message suggests a `--mode ...@PORT` flag klockproxy does not have.
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) if exc else "unknown error"


class _ReadyProbe:
    """A mitmproxy addon whose ``running`` hook fires after the servers were set up."""

    def __init__(self) -> None:
        self.running_event = asyncio.Event()

    def running(self) -> None:
        """mitmproxy hook: the servers are listening."""
        self.running_event.set()


@dataclass
class RunningMaster:
    """A started embedded mitmproxy: its URL, and ``await stop()``."""

    master: Any
    task: asyncio.Task[None]
    url: str

    async def stop(self) -> None:
        """Shut mitmproxy down and wait (briefly) for it to finish."""
        self.master.shutdown()
        try:
            await asyncio.wait_for(self.task, 3)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()
        except Exception:
            logger.exception("mitmproxy stopped with an error")


def _bare_addons_package() -> None:
    """Make ``mitmproxy.addons`` a bare package, unless something imported it already.

    Its ``__init__`` imports every default addon (flow filters and pyparsing, proxy auth, the
    onboarding web app...) so that ``default_addons()`` can list them: about 0.2 s of a start
    and 300 modules this master never uses. The package is made from its spec without running
    ``__init__``; the four submodules the master uses import as usual. Only mitmproxy's own
    tools (mitmdump, mitmweb) call ``default_addons()``, and they never run in a process
    that runs this master.
    """
    if "mitmproxy.addons" in sys.modules:
        return
    spec = importlib.util.find_spec("mitmproxy.addons")
    if spec is None or spec.submodule_search_locations is None:
        return
    sys.modules["mitmproxy.addons"] = importlib.util.module_from_spec(spec)


async def start_master(
    *,
    host: str,
    port: int,
    upstream_server: str,
    confdir: Path,
    addons: Sequence[Any],
    options: Mapping[str, Any],
) -> RunningMaster:
    """Start a reverse proxy to ``upstream_server`` on ``host:port`` with ``addons``.

    ``options`` are set after the addons are loaded (so ``klock_*`` and the built-in addons'
    options are known); options of addons this master does not carry are skipped. Raises
    ConfigError when mitmproxy cannot start or listen.
    """
    _bare_addons_package()
    from mitmproxy import options as mitm_options
    from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    confdir.mkdir(mode=0o700, exist_ok=True)
    proxyserver_log = logging.getLogger("mitmproxy.addons.proxyserver")
    if _LISTEN_FILTER not in proxyserver_log.filters:
        proxyserver_log.addFilter(_LISTEN_FILTER)
    opts = mitm_options.Options(
        mode=[f"reverse:{upstream_server}"],
        listen_host=host,
        listen_port=port,
        confdir=str(confdir),
    )
    master = Master(opts)
    probe = _ReadyProbe()
    ps = proxyserver.Proxyserver()
    master.addons.add(
        core.Core(), ps, next_layer.NextLayer(), tlsconfig.TlsConfig(), *addons, probe
    )
    known = set(master.options.keys())
    master.options.update(**{k: v for k, v in options.items() if k in known})
    task = asyncio.create_task(master.run(), name="klockproxy-mitmproxy")
    running = asyncio.create_task(probe.running_event.wait())
    done, _ = await asyncio.wait({running, task}, return_when=asyncio.FIRST_COMPLETED)
    started = RunningMaster(master=master, task=task, url="")
    if running not in done:
        running.cancel()
        exc = task.exception() if task.done() else None
        raise ConfigError(f"the proxy did not start: {exc or 'mitmproxy exited'}")
    addrs = [a for server in ps.servers if server.is_running for a in server.listen_addrs]
    failed = [server for server in ps.servers if not server.is_running]
    if failed or not addrs:
        reasons = "; ".join(_bind_error(server.last_exception) for server in failed)
        await started.stop()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reasons or 'no address'} "
            "(choose another address with --listen)"
        )
    started.url = f"https://{url_host(host)}:{int(addrs[0][1])}"
    return started


class ProxyService(StartedOrStopped, Generic[S]):
    """A proxy mode's service (local mode, the gateway): its ``settings``, its ``lock_set``
    (``_start_lock_set``) and the embedded mitmproxy its ``_start`` ends with (``_serve``),
    serving at ``url``. The rest of ``_start`` (credentials, certificates, the addons) is
    the mode's own."""

    def __init__(self, settings: S) -> None:
        self.settings = settings
        self.url = ""
        self.lock_set: LockSet | None = None
        self._master: RunningMaster | None = None

    def update_options(self, **options: Any) -> None:
        """Change options of the running mitmproxy (``klock_*`` included), on its loop."""
        if self._master is None:
            raise RuntimeError("the proxy is not running")
        self._master.master.options.update(**options)

    async def _start_lock_set(self, lookups: Upstream) -> LockSet:
        """The lock sources ``settings.locks`` names (Lock objects watched through
        ``lookups``, lock files), started; ``stop()`` stops them."""
        s = self.settings
        self.lock_set = create_lock_sources(s.locks, lookups, s.default_namespace)
        self.releases.push_async_callback(self.lock_set.stop)
        await self.lock_set.start()
        return self.lock_set

    async def _serve(
        self,
        listen: tuple[str, int],
        lock_set: LockSet,
        upstream: UpstreamConfig,
        serving_pem: Path,
        run_dir: Path,
        addons: Sequence[Any],
        options: Mapping[str, Any],
    ) -> None:
        """Start mitmproxy on ``listen`` in front of ``upstream``'s API server, its confdir in
        ``run_dir`` (``stop()`` stops it): ``addons``, then ``LeanTls`` serving ``serving_pem``;
        the options every proxy mode sets (``klock_options``) with the mode's ``options`` over
        them. Returns once it listens and ``lock_set`` had ``settings.locks_ready_timeout`` to
        load (past that it serves anyway, refusing mutations until the Locks are ready)."""
        from klockproxy.proxy.lean_tls import LeanTls

        s = self.settings
        host, port = listen
        self._master = await start_master(
            host=host,
            port=port,
            upstream_server=upstream.server,
            confdir=run_dir / "mitmproxy",
            addons=[*addons, LeanTls(serving_pem)],
            options={
                **klock_options(serving_pem, upstream, s.locks, s.default_namespace),
                **options,
            },
        )
        self.releases.push_async_callback(self._master.stop)
        self.url = self._master.url
        await wait_for_locks(lock_set, s.locks_ready_timeout, "mutations are refused")
