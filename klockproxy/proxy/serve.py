"""``klockproxy serve``: local mode, a Lock-enforcing proxy in front of one kubeconfig context.

The proxy reads the chosen context (server, CA, client certificate, bearer token, token file or
exec plugin, through the official kubernetes client), serves HTTPS with its own CA (kept in the
state directory), and writes a kubeconfig whose user holds a random token. The proxy demands
that token from every client (401 otherwise), drops it, and attaches the real credentials
upstream, so no other local process can ride them.

mitmproxy is embedded as in ``proxy.master`` with ``KlockProxy`` and ``LeanTls``.
``LocalProxy`` is the service; ``ProxyThread`` runs it in a thread for tests and benchmarks;
``run`` is the command. Reading the kubeconfig lives in ``cluster.kubeconfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klockproxy.audit import AuditLog
from klockproxy.cluster.kubeconfig import KubeconfigTarget, load_upstream, write_kubeconfig
from klockproxy.cluster.lock_sources import LockSet, create_lock_sources
from klockproxy.cluster.private_files import write_private
from klockproxy.cluster.upstream import Upstream
from klockproxy.core.errors import ConfigError
from klockproxy.loop_thread import LoopThread, cancel
from klockproxy.proxy.master import (
    RunningMaster,
    cert_hosts,
    quiet_mitmproxy_logging,
    start_master,
)
from klockproxy.service import (
    StartedOrStopped,
    add_audit_log_option,
    add_locks_option,
    make_run_dir,
    parse_listen,
    refresh_token_file,
    run_service,
    wait_for_locks,
)

if TYPE_CHECKING:
    # Imported where used: `klockproxy --help` must not pay for aiohttp and cryptography.
    from klockproxy.cluster.upstream import UpstreamConfig

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_STATE_DIR = "~/.klockproxy"
PROXY_CA_NAME = "klockproxy local CA"
# How long to wait for the lock sources before announcing readiness anyway (mutations are
# refused until they are ready: fail closed).
LOCKS_READY_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# The proxy


@dataclass
class ServeSettings:
    """Everything ``klockproxy serve`` is told."""

    write_kubeconfig: Path
    kubeconfig: str | None = None
    context: str | None = None
    listen: str = DEFAULT_LISTEN
    locks: Sequence[str] = ("cluster",)
    state_dir: Path = field(default_factory=lambda: Path(DEFAULT_STATE_DIR).expanduser())
    default_namespace: str = "default"
    locks_ready_timeout: float = LOCKS_READY_TIMEOUT
    audit_log: str | None = None


class LocalProxy(StartedOrStopped):
    """The local-mode proxy: ``await start()`` (ready when it returns; ConfigError or
    LockValidationError with a message fit for the user), ``await stop()``."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.url = ""
        self.kubeconfig_path = Path(settings.write_kubeconfig)
        self.lock_set: LockSet | None = None
        self.target: KubeconfigTarget | None = None
        self._token = secrets.token_urlsafe(32)
        self._run_dir: Path | None = None
        self._master: RunningMaster | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        # One client to the API server for the lock watch and the proxy's lookups.
        self._upstream: Upstream | None = None
        self._audit: AuditLog | None = None

    @property
    def client_token(self) -> str:
        """The token every client must present (it is in the written kubeconfig)."""
        return self._token

    def ready_line(self) -> str:
        """The one line ``serve`` prints once it accepts connections."""
        locks = self.lock_set.describe() if self.lock_set is not None else "no locks"
        if self.lock_set is not None and not self.lock_set.ready:
            locks += " (not ready yet: mutations are refused until they are)"
        return f"klockproxy serving on {self.url} (kubeconfig: {self.kubeconfig_path}, {locks})"

    async def _start(self) -> None:
        """Read the kubeconfig, load the locks, start mitmproxy, write the kubeconfig."""
        s = self.settings
        host, port = parse_listen(s.listen)
        state_dir = Path(s.state_dir).expanduser()
        # Per-run copies of credentials live in a private directory removed at exit.
        self._run_dir = run_dir = make_run_dir(state_dir)

        self.target = await asyncio.to_thread(
            load_upstream, s.kubeconfig, s.context, run_dir / "upstream"
        )
        upstream = self.target.upstream
        if self.target.refresh is not None and upstream.token_file:
            # Exec plugins hand out expiring tokens; the forwarding addon and the lock watch
            # re-read the file when it changes.
            self._refresh_task = asyncio.create_task(
                refresh_token_file(
                    self.target.refresh, Path(upstream.token_file), "the upstream token"
                ),
                name="klockproxy-token-refresh",
            )

        from klockproxy.cluster.certs import CertificateAuthority

        ca = await asyncio.to_thread(CertificateAuthority.load_or_create, state_dir, PROXY_CA_NAME)
        hosts = cert_hosts(host)
        cert_pem, key_pem = ca.issue_server(hosts)
        proxy_pem = run_dir / "proxy.pem"
        write_private(proxy_pem, cert_pem + key_pem)
        client_pem: Path | None = None
        if upstream.client_cert_file and upstream.client_key_file:
            client_pem = run_dir / "upstream-client.pem"
            write_private(
                client_pem,
                Path(upstream.client_cert_file).read_bytes()
                + b"\n"
                + Path(upstream.client_key_file).read_bytes(),
            )
        token_file = run_dir / "client-token"
        write_private(token_file, self._token.encode())

        if s.audit_log:
            self._audit = AuditLog(s.audit_log)
        self._upstream = Upstream(upstream)
        self.lock_set = create_lock_sources(s.locks, self._upstream, s.default_namespace)
        await self.lock_set.start()

        await self._start_master(
            host=host,
            port=port,
            upstream=upstream,
            proxy_pem=proxy_pem,
            client_pem=client_pem,
            token_file=token_file,
            confdir=run_dir / "mitmproxy",
        )
        await wait_for_locks(self.lock_set, s.locks_ready_timeout, "mutations are refused")
        namespace = self.target.namespace
        write_kubeconfig(
            self.kubeconfig_path,
            server=self.url,
            ca_pem=ca.cert_pem,
            users={"klockproxy": {"token": self._token}},
            current_user="klockproxy",
            cluster_name="klockproxy",
            namespace=namespace,
        )

    async def _start_master(
        self,
        *,
        host: str,
        port: int,
        upstream: UpstreamConfig,
        proxy_pem: Path,
        client_pem: Path | None,
        token_file: Path,
        confdir: Path,
    ) -> None:
        from klockproxy.proxy.addon import KlockProxy
        from klockproxy.proxy.lean_tls import LeanTls

        if self.lock_set is None:
            raise ConfigError("the proxy was started before its locks were set up")
        update: dict[str, Any] = {
            "certs": [f"*={proxy_pem}"],
            # We serve our own certificate: no need to peek at the upstream one first.
            "upstream_cert": False,
            "connection_strategy": "lazy",
            "ssl_insecure": upstream.insecure,
            "klock_locks": list(self.settings.locks),
            "klock_default_namespace": self.settings.default_namespace,
            "klock_upstream": upstream.server,
            "klock_client_token_file": str(token_file),
        }
        if upstream.ca_file:
            update["ssl_verify_upstream_trusted_ca"] = upstream.ca_file
            update["klock_upstream_ca"] = upstream.ca_file
        if client_pem is not None:
            update["client_certs"] = str(client_pem)
            update["klock_upstream_client_cert"] = upstream.client_cert_file
            update["klock_upstream_client_key"] = upstream.client_key_file
        if upstream.token_file:
            update["klock_upstream_token_file"] = upstream.token_file
        self._master = await start_master(
            host=host,
            port=port,
            upstream_server=upstream.server,
            confdir=confdir,
            addons=[
                KlockProxy(lock_set=self.lock_set, upstream=self._upstream, audit=self._audit),
                LeanTls(proxy_pem),
            ],
            options=update,
        )
        self.url = self._master.url

    async def stop(self) -> None:
        """Stop mitmproxy and the lock sources; remove the per-run credential copies."""
        refresh, self._refresh_task = self._refresh_task, None
        await cancel(refresh)
        master, self._master = self._master, None
        if master is not None:
            await master.stop()
        if self.lock_set is not None:
            await self.lock_set.stop()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.close()
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


# ---------------------------------------------------------------------------------------------
# In a thread (tests, benchmarks)


class ProxyThread(LoopThread[LocalProxy]):
    """Run a ``LocalProxy`` on its own event loop in a daemon thread (tests, benchmarks).

    ``start()`` returns once the proxy accepts connections (raises if it could not start);
    ``stop()`` shuts it down. ``url``, ``kubeconfig_path`` and ``client_token`` as in LocalProxy.
    """

    thread_name = "klockproxy-proxy"

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(LocalProxy(settings))

    @property
    def proxy(self) -> LocalProxy:
        """The running proxy."""
        return self.service

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` the proxy listens on (known once started)."""
        return self.proxy.url

    @property
    def kubeconfig_path(self) -> Path:
        """The kubeconfig the proxy wrote (cluster = the proxy, user = its token)."""
        return self.proxy.kubeconfig_path

    @property
    def client_token(self) -> str:
        """The token the proxy demands from every client."""
        return self.proxy.client_token


# ---------------------------------------------------------------------------------------------
# The command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``klockproxy serve``."""
    parser.add_argument(
        "--kubeconfig", help="kubeconfig to read (default $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument("--context", help="context to use (default: the current context)")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})"
    )
    add_locks_option(parser)
    parser.add_argument(
        "--write-kubeconfig",
        required=True,
        metavar="OUT",
        help="write a kubeconfig pointing at the proxy here (it holds the proxy's token)",
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where the proxy keeps its CA (default {DEFAULT_STATE_DIR})",
    )
    add_audit_log_option(parser, "mutation")
    parser.add_argument(
        "--default-namespace",
        default="default",
        help="namespace of lock-file Locks that name none (default 'default')",
    )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """ServeSettings from parsed ``serve`` arguments."""
    return ServeSettings(
        write_kubeconfig=Path(args.write_kubeconfig).expanduser(),
        kubeconfig=args.kubeconfig,
        context=args.context,
        listen=args.listen,
        locks=tuple(args.locks or ("cluster",)),
        state_dir=Path(args.state_dir).expanduser(),
        default_namespace=args.default_namespace,
        audit_log=args.audit_log,
    )


def checked_settings(args: argparse.Namespace) -> ServeSettings:
    """``settings_from_args`` with the listen address checked (ConfigError)."""
    settings = settings_from_args(args)
    parse_listen(settings.listen)
    return settings


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy serve``; returns the exit code."""
    quiet_mitmproxy_logging()
    return run_service(lambda: LocalProxy(checked_settings(args)))
