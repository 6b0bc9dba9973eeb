"""``klockproxy serve``: local mode, a Lock-enforcing proxy in front of one kubeconfig context.

The proxy reads the chosen context (server, CA, client certificate, bearer token, token file or
exec plugin, through the official kubernetes client), serves HTTPS with its own CA (kept in the
state directory), and writes a kubeconfig whose user holds a random token. The proxy demands
that token from every client (401 otherwise), drops it, and attaches the real credentials
upstream, so no other local process can ride them.

mitmproxy is embedded as a bare ``Master`` carrying only the addons a reverse proxy needs,
plus ``KlockProxy``. ``LocalProxy`` is the reusable core; ``ProxyThread`` runs it in a thread
for tests and benchmarks; ``run`` is the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.cluster.lock_sources import LockSet, create_lock_sources
from klockproxy.core.errors import ConfigError, KlockProxyError, LockValidationError

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
# How often to ask the kubeconfig's credential plugin whether its token needs renewing.
TOKEN_REFRESH_INTERVAL = 30.0


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[::1]:PORT`` / ``PORT`` -> (host, port). Raises ConfigError."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError as e:
        raise ConfigError(f"--listen {value!r}: the port is not a number") from e
    if not 0 <= port <= 65535:
        raise ConfigError(f"--listen {value!r}: the port is out of range")
    return host, port


# ---------------------------------------------------------------------------------------------
# Reading the user's kubeconfig


@dataclass(frozen=True)
class KubeconfigTarget:
    """What the chosen kubeconfig context says: the upstream and the default namespace."""

    upstream: UpstreamConfig
    namespace: str
    context: str
    # Re-reads an expiring (exec plugin) token; None when the credentials do not expire.
    refresh: Callable[[], str | None] | None = None


def load_upstream(kubeconfig: str | None, context: str | None, files_dir: Path) -> KubeconfigTarget:
    """Read a kubeconfig context with the official client and copy its credentials into
    ``files_dir`` (mode 0600), so that mitmproxy and the lookups can use them.

    Handles client certificates (file or inline data), bearer tokens, token files (used in
    place) and exec plugins (run here; the token is written to a file, and ``refresh`` runs
    the plugin again once that token expires). With no ``kubeconfig``, the first file of
    $KUBECONFIG is read, else ~/.kube/config. Raises ConfigError.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from klockproxy.cluster.upstream import UpstreamConfig

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    if path is None:
        path = os.path.expanduser("~/.kube/config")
    try:
        config.load_kube_config(
            config_file=path, context=context, client_configuration=cfg, persist_config=False
        )
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"cannot use kubeconfig {path}: {e}") from e
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    ctx_name = str((chosen or {}).get("name") or context or "")
    namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")

    server = str(cfg.host or "")
    if not server.startswith("https://"):
        raise ConfigError(f"context {ctx_name!r}: the server {server!r} is not an https:// URL")
    files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def copy(src: str | None, name: str) -> str | None:
        # The client writes inline data to temporary files it deletes at exit: keep our own.
        if not src:
            return None
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise ConfigError(f"context {ctx_name!r}: cannot read {src}: {e}") from e
        dest = files_dir / name
        _write_private(dest, data)
        return str(dest)

    ca_file = copy(cfg.ssl_ca_cert, "upstream-ca.crt")
    cert_file = copy(cfg.cert_file, "upstream-client.crt")
    key_file = copy(cfg.key_file, "upstream-client.key")
    token_file = None
    token = _bearer_token(cfg)
    user_token_file = _user_token_file(path, chosen)
    if user_token_file is not None and token is not None:
        # Use the user's own file: it is re-read when it changes (rotated projected tokens).
        token_file = user_token_file
    elif token is not None:
        token_file = str(files_dir / "upstream-token")
        _write_private(Path(token_file), token.encode())
    if cert_file is None and token_file is None:
        raise ConfigError(
            f"context {ctx_name!r} has no credentials klockproxy can use "
            "(client certificate, token, token file or exec plugin)"
        )
    upstream = UpstreamConfig(
        server=server.rstrip("/"),
        ca_file=ca_file,
        token_file=token_file,
        client_cert_file=cert_file,
        client_key_file=key_file,
        insecure=not cfg.verify_ssl,
    )
    refresh: Callable[[], str | None] | None = None
    hook = getattr(cfg, "refresh_api_key_hook", None)
    # Only our own copy is ever rewritten; the user's tokenFile is re-read where it is.
    if token is not None and user_token_file is None and callable(hook):

        def refresh() -> str | None:
            # Re-runs an exec plugin once its token has expired (the client's own logic).
            hook(cfg)
            return _bearer_token(cfg)

    return KubeconfigTarget(
        upstream=upstream, namespace=namespace, context=ctx_name, refresh=refresh
    )


def _user_token_file(kubeconfig: str, context: Any) -> str | None:
    """The ``tokenFile`` of the context's user (absolute), when it has one and no exec plugin."""
    import yaml

    user_name = ((context or {}).get("context") or {}).get("user")
    try:
        data = yaml.safe_load(Path(kubeconfig).read_text())
    except (OSError, yaml.YAMLError):
        return None
    for entry in (data or {}).get("users") or []:
        if isinstance(entry, dict) and entry.get("name") == user_name:
            user = entry.get("user") or {}
            token_file = user.get("tokenFile")
            if token_file and not user.get("token") and not user.get("exec"):
                return str((Path(kubeconfig).parent / str(token_file)).resolve())
    return None


def _bearer_token(cfg: Any) -> str | None:
    """The bearer token the client configuration would send, without the prefix."""
    keys = cfg.api_key or {}
    value = keys.get("BearerToken") or keys.get("authorization")
    if not value:
        return None
    value = str(value).strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip()
    if rest and scheme.lower() == "basic":
        raise ConfigError("basic authentication (username/password) is not supported")
    return value


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


class _ReadyProbe:
    """A mitmproxy addon whose ``running`` hook fires after the servers were set up."""

    def __init__(self) -> None:
        self.running_event = asyncio.Event()

    def running(self) -> None:
        """mitmproxy hook: the servers are listening."""
        self.running_event.set()


class LocalProxy:
    """The local-mode proxy: ``await start()`` (ready when it returns), ``await stop()``."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.url = ""
        self.kubeconfig_path = Path(settings.write_kubeconfig)
        self.lock_set: LockSet | None = None
        self.target: KubeconfigTarget | None = None
        self._token = secrets.token_urlsafe(32)
        self._run_dir: Path | None = None
        self._master: Any = None
        self._master_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None

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

    async def start(self) -> None:
        """Read the kubeconfig, load the locks, start mitmproxy, write the kubeconfig.

        Raises ConfigError (or LockValidationError) with a message fit for the user.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        host, port = parse_listen(s.listen)
        state_dir = Path(s.state_dir).expanduser()
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Per-run copies of credentials live in a private directory removed at exit.
            self._run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=state_dir))
        except OSError as e:
            raise ConfigError(f"cannot use state directory {state_dir}: {e}") from e
        run_dir = self._run_dir

        self.target = await asyncio.to_thread(
            load_upstream, s.kubeconfig, s.context, run_dir / "upstream"
        )
        upstream = self.target.upstream
        if self.target.refresh is not None and upstream.token_file:
            self._refresh_task = asyncio.create_task(
                self._refresh_token(self.target.refresh, Path(upstream.token_file)),
                name="klockproxy-token-refresh",
            )

        from klockproxy.cluster.certs import CertificateAuthority

        ca = await asyncio.to_thread(CertificateAuthority.load_or_create, state_dir, PROXY_CA_NAME)
        hosts = _cert_hosts(host)
        cert_pem, key_pem = ca.issue_server(hosts)
        proxy_pem = run_dir / "proxy.pem"
        _write_private(proxy_pem, cert_pem + key_pem)
        client_pem: Path | None = None
        if upstream.client_cert_file and upstream.client_key_file:
            client_pem = run_dir / "upstream-client.pem"
            _write_private(
                client_pem,
                Path(upstream.client_cert_file).read_bytes()
                + b"\n"
                + Path(upstream.client_key_file).read_bytes(),
            )
        token_file = run_dir / "client-token"
        _write_private(token_file, self._token.encode())

        self.lock_set = create_lock_sources(s.locks, upstream, s.default_namespace)
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
        if not await self.lock_set.wait_ready(s.locks_ready_timeout):
            logger.warning(
                "lock sources not ready after %.0f s: mutations are refused until they are",
                s.locks_ready_timeout,
            )
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
        from mitmproxy import options
        from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
        from mitmproxy.master import Master

        from klockproxy.proxy.addon import KlockProxy
        from klockproxy.proxy.lean_tls import LeanTls

        if self.lock_set is None:
            raise ConfigError("the proxy was started before its locks were set up")
        confdir.mkdir(mode=0o700, exist_ok=True)
        opts = options.Options(
            mode=[f"reverse:{upstream.server}"],
            listen_host=host,
            listen_port=port,
            confdir=str(confdir),
        )
        master = Master(opts)
        probe = _ReadyProbe()
        ps = proxyserver.Proxyserver()
        master.addons.add(
            core.Core(),
            ps,
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            KlockProxy(lock_set=self.lock_set),
            LeanTls(proxy_pem),
            probe,
        )
        update: dict[str, Any] = {
            "certs": [f"*={proxy_pem}"],
            # We serve our own certificate: no need to peek at the upstream one first.
            "upstream_cert": False,
            "connection_strategy": "lazy",
            # Only clients holding the token get anywhere; the address is the user's choice.
            "block_global": False,
            "ssl_insecure": upstream.insecure,
            "klock_locks": list(self.settings.locks),
            "klock_default_namespace": self.settings.default_namespace,
            "klock_upstream": upstream.server,
            "klock_client_token_file": str(token_file),
        }
        if upstream.ca_file:
            update["ssl_verify_upstream_trusted_ca"] = upstream.ca_file
        if client_pem is not None:
            update["client_certs"] = str(client_pem)
            update["klock_upstream_client_cert"] = upstream.client_cert_file
            update["klock_upstream_client_key"] = upstream.client_key_file
        if upstream.token_file:
            update["klock_upstream_token_file"] = upstream.token_file
        if upstream.ca_file:
            update["klock_upstream_ca"] = upstream.ca_file
        known = set(master.options.keys())
        # block_global belongs to the block addon, which a bare master does not carry.
        master.options.update(**{k: v for k, v in update.items() if k in known})
        self._master = master
        self._master_task = asyncio.create_task(master.run(), name="klockproxy-mitmproxy")
        running = asyncio.create_task(probe.running_event.wait())
        done, _ = await asyncio.wait(
            {running, self._master_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if running not in done:
            running.cancel()
            exc = self._master_task.exception() if self._master_task.done() else None
            raise ConfigError(f"the proxy did not start: {exc or 'mitmproxy exited'}")
        addrs = [a for server in ps.servers if server.is_running for a in server.listen_addrs]
        failed = [server for server in ps.servers if not server.is_running]
        if failed or not addrs:
            reasons = "; ".join(_bind_error(server.last_exception) for server in failed)
            raise ConfigError(
                f"cannot listen on {host}:{port}: {reasons or 'no address'} "
                "(choose another address with --listen)"
            )
        bound_port = int(addrs[0][1])
        self.url = f"https://{_url_host(host)}:{bound_port}"

    async def _refresh_token(self, refresh: Callable[[], str | None], path: Path) -> None:
        """Keep the upstream token file current (exec plugins hand out expiring tokens).

        Both the forwarding addon and the lock watch re-read the file when it changes.
        """
        current = path.read_text().strip()
        while True:
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL)
            try:
                token = await asyncio.to_thread(refresh)
            except Exception as e:
                logger.warning("refreshing the upstream credentials failed: %s", type(e).__name__)
                continue
            if token and token != current:
                _write_private(path, token.encode())
                current = token
                logger.info("upstream token refreshed")

    async def stop(self) -> None:
        """Stop mitmproxy and the lock sources; remove the per-run credential copies."""
        refresh, self._refresh_task = self._refresh_task, None
        if refresh is not None:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
        master, self._master = self._master, None
        task, self._master_task = self._master_task, None
        if master is not None:
            master.shutdown()
        if task is not None:
            try:
                await asyncio.wait_for(task, 3)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception:
                logger.exception("mitmproxy stopped with an error")
        if self.lock_set is not None:
            await self.lock_set.stop()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def _bind_error(exc: BaseException | None) -> str:
    # mitmproxy's own message suggests a `--mode ...@PORT` flag klockproxy does not have.
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) if exc else "unknown error"


def _cert_hosts(host: str) -> list[str]:
    hosts = [host] if host not in ("0.0.0.0", "::", "") else []
    for extra in ("localhost", "127.0.0.1", "::1"):
        if extra not in hosts:
            hosts.append(extra)
    return hosts


def _url_host(host: str) -> str:
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


# ---------------------------------------------------------------------------------------------
# In a thread (tests, benchmarks)


class ProxyThread:
    """Run a ``LocalProxy`` on its own event loop in a daemon thread.

    ``start()`` returns once the proxy accepts connections (raises if it could not start);
    ``stop()`` shuts it down. ``url``, ``kubeconfig_path`` and ``client_token`` as in LocalProxy.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.proxy = LocalProxy(settings)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

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

    def start(self, timeout: float = 30.0) -> ProxyThread:
        """Start and wait until ready; raises what the proxy raised, or TimeoutError."""
        self._thread = threading.Thread(target=self._main, name="klockproxy-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("klockproxy did not become ready")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the proxy and join the thread."""
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.proxy.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.proxy.stop()


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
    parser.add_argument(
        "--locks",
        nargs="+",
        action="extend",
        metavar="cluster|PATH",
        help="where Locks come from: 'cluster' (watch Lock objects) and/or lock files or "
        "directories (reloaded on change); default: cluster",
    )
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
    )


def quiet_mitmproxy_logging() -> None:
    """mitmproxy logs every connection at INFO; keep its warnings and errors only."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)


async def serve_until_signal(proxy: LocalProxy, announce: str) -> int:
    """Start ``proxy``, print ``announce`` lines and the ready line, serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await proxy.start()
        except (KlockProxyError, OSError) as e:
            print(f"klockproxy: {e}", file=sys.stderr)
            return 1
        print(proxy.ready_line(), flush=True)
        if announce:
            print(announce, flush=True)
        await stop.wait()
        logger.info("stopping")
        await proxy.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy serve``; returns the exit code."""
    quiet_mitmproxy_logging()
    try:
        settings = settings_from_args(args)
        parse_listen(settings.listen)
    except ConfigError as e:
        print(f"klockproxy: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve_until_signal(LocalProxy(settings), ""))
    except LockValidationError as e:
        print(f"klockproxy: {e}", file=sys.stderr)
        return 1
