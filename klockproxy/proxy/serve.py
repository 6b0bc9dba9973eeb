"""``klockproxy serve``: local mode, a Lock-enforcing proxy in front of one kubeconfig context.

The proxy reads the chosen context (server, CA, client certificate, bearer token, token file or
exec plugin, through the official kubernetes client), serves HTTPS with its own CA (kept in the
state directory), and writes a kubeconfig whose user holds a random token. The proxy demands
that token from every client (401 otherwise), drops it, and attaches the real credentials
upstream, so no other local process can ride them.

mitmproxy is embedded as in ``proxy.master`` with ``KlockProxy`` and ``LeanTls``.
``LocalProxy`` is the service (a ``proxy.master.ProxyService``); ``ProxyThread`` runs it in a
thread for tests and benchmarks; ``run`` is the command. Reading the kubeconfig lives in
``cluster.kubeconfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klockproxy.audit import AuditLog
from klockproxy.cluster.kubeconfig import (
    KubeconfigTarget,
    OwnCredentials,
    load_upstream,
    write_kubeconfig,
)
from klockproxy.cluster.private_files import write_private
from klockproxy.cluster.upstream import Upstream
from klockproxy.loop_thread import LoopThread
from klockproxy.proxy.master import ProxyService, cert_hosts, run_proxy
from klockproxy.service import (
    OptionTexts,
    ServiceSettings,
    add_service_options,
    add_state_dir_option,
    parse_listen,
)

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_STATE_DIR = "~/.klockproxy"
PROXY_CA_NAME = "klockproxy local CA"


# ---------------------------------------------------------------------------------------------
# The proxy


@dataclass(kw_only=True)
class ServeSettings(ServiceSettings):
    """Everything ``klockproxy serve`` is told (besides what every service is)."""

    write_kubeconfig: Path
    listen: str = DEFAULT_LISTEN
    state_dir: Path = field(default_factory=lambda: Path(DEFAULT_STATE_DIR).expanduser())


class LocalProxy(ProxyService[ServeSettings]):
    """The local-mode proxy: ``await start()`` (ready when it returns; ConfigError or
    LockValidationError with a message fit for the user), ``await stop()``."""

    # Local mode holds the user's own kubeconfig credentials, never a pod's.
    option_texts = OptionTexts("the proxy", OwnCredentials.KUBECONFIG)

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(settings)
        self.kubeconfig_path = Path(settings.write_kubeconfig)
        self.target: KubeconfigTarget | None = None
        self._token = secrets.token_urlsafe(32)
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
        run_dir = self.private_run_dir(state_dir)

        self.target = await asyncio.to_thread(
            load_upstream, s.kubeconfig, s.context, run_dir / "upstream"
        )
        upstream = self.target.upstream
        # The forwarding addon and the lock watch re-read the file when it changes.
        self.keep_token_fresh(self.target.refresh, upstream.token_file, "the upstream token")

        from klockproxy.cluster.certs import CertificateAuthority

        ca = await asyncio.to_thread(CertificateAuthority.load_or_create, state_dir, PROXY_CA_NAME)
        cert_pem, key_pem = ca.issue_server(cert_hosts(host))
        proxy_pem = run_dir / "proxy.pem"
        write_private(proxy_pem, cert_pem + key_pem)
        token_file = run_dir / "client-token"
        write_private(token_file, self._token.encode())

        if s.audit_log:
            self._audit = AuditLog(s.audit_log)
            self.releases.callback(self._audit.close)
        # One client to the API server for the lock watch and the proxy's lookups.
        self._upstream = Upstream(upstream)
        self.releases.push_async_callback(self._upstream.close)
        lock_set = await self._start_lock_set(self._upstream)

        from klockproxy.proxy.addon import KlockProxy

        # Local mode's own options (``_serve`` adds those every proxy mode sets).
        options: dict[str, Any] = {"klock_client_token_file": str(token_file)}
        if upstream.ca_file:
            options["klock_upstream_ca"] = upstream.ca_file
        if upstream.client_cert_file and upstream.client_key_file:
            client_pem = run_dir / "upstream-client.pem"
            write_private(
                client_pem,
                Path(upstream.client_cert_file).read_bytes()
                + b"\n"
                + Path(upstream.client_key_file).read_bytes(),
            )
            options["client_certs"] = str(client_pem)
            options["klock_upstream_client_cert"] = upstream.client_cert_file
            options["klock_upstream_client_key"] = upstream.client_key_file
        if upstream.token_file:
            options["klock_upstream_token_file"] = upstream.token_file
        klock = KlockProxy(lock_set=lock_set, upstream=self._upstream, audit=self._audit)
        await self._serve((host, port), lock_set, upstream, proxy_pem, run_dir, [klock], options)
        write_kubeconfig(
            self.kubeconfig_path,
            server=self.url,
            ca_pem=ca.cert_pem,
            users={"klockproxy": {"token": self._token}},
            current_user="klockproxy",
            cluster_name="klockproxy",
            namespace=self.target.namespace,
        )


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
    def kubeconfig_path(self) -> Path:
        """The kubeconfig the proxy wrote (cluster = the proxy, user = its token)."""
        return self.service.kubeconfig_path

    @property
    def client_token(self) -> str:
        """The token the proxy demands from every client."""
        return self.service.client_token


# ---------------------------------------------------------------------------------------------
# The command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``klockproxy serve``."""
    add_service_options(parser, ServeSettings, LocalProxy.option_texts)
    parser.add_argument(
        "--write-kubeconfig",
        required=True,
        metavar="OUT",
        help="write a kubeconfig pointing at the proxy here (it holds the proxy's token)",
    )
    add_state_dir_option(parser, DEFAULT_STATE_DIR, "the proxy keeps its CA")
    parser.add_argument(
        "--default-namespace",
        default="default",
        help="namespace of lock-file Locks that name none (default 'default')",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy serve``; returns the exit code."""
    return run_proxy(LocalProxy, ServeSettings, args)
