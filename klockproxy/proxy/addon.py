"""The mitmproxy addon: Klock ``Lock`` objects enforced between kubectl and the API server.

For every request (see docs/ARCHITECTURE.md and issue 4):

* local mode (``klock_client_token_file``): the client must present the proxy's token
  (constant-time compare, 401 Status otherwise); it is replaced by the upstream credentials;
* reads, discovery and OpenAPI pass untouched and every response is streamed, so watches and
  ``logs -f`` flow event by event;
* mutations the proxy cannot classify are refused; Lock objects themselves pass; when no lock
  in the namespace covers the operation the request is forwarded without any further work
  (no body decode, no lookup); otherwise the old labels are read from the API server AS THE
  CALLER, the new ones from the body (or by applying the patch), the engine decides and a
  denial is a 403 Status the way the API server words admission denials (klockproxy.judge);
* an allowed write whose decision depended on the current object is made conditional on the
  checked ``resourceVersion`` (DeleteOptions preconditions, ``metadata.resourceVersion``, a
  JSON-patch ``test``; protobuf bodies get the fields appended, which protobuf merges), so a
  concurrent relabel makes it fail with 409 instead of slipping past a lock. This is done for
  every covered write judged against an existing object, not only when a lock matched it: a
  relabel racing an allowed write could just as well make a lock match. deletecollection
  cannot carry a precondition (documented limitation) (klockproxy.core.guards);
* everything fails closed: no locks loaded yet, lookups failing (other than 404), bodies that
  cannot be decoded -> a Status saying why; reads keep flowing.

Streams and long connections: WebSocket and raw TCP messages are not kept in memory; the idle
timeout mitmproxy hard-codes (``mitmproxy.proxy.server.TCP_TIMEOUT``, 600 s) is raised when
the addon is configured (``klock_idle_timeout``), because an idle ``exec -it``, ``logs -f`` or
watch must not be cut; a new upstream connection's connect and TLS handshake keep deadlines of
their own (client-go's 30 and 10 s, ``klockproxy.proxy.upstream_deadlines``, a sub-addon in
``addons``). mitmproxy answers an unreachable upstream with an HTML 502 that no hook
can replace (it is written by the protocol layer after the ``error`` hook): the addon's
``next_layer`` hook gives the HTTP layer a subclass that sends a Status instead
(klockproxy.proxy.upstream_errors), and before a flow opens a new upstream connection the
addon checks that the API server accepts TCP connections and otherwise answers a 503 Status
naming it. That needs ``connection_strategy=lazy`` (with
``eager`` mitmproxy resets the client's TLS handshake before any hook runs), which the addon
sets when the proxy starts.

Deletions that delete other objects are judged on what they would delete: a namespace (any
DELETE lock in it that applies to the caller refuses it), a CustomResourceDefinition (its
objects are listed and judged), deletecollection (the listed objects are judged), a cascading
DELETE (the dependents the garbage collector would delete among ``DEPENDENT_KINDS`` of the
namespace, found by owner uid). A write that adds or changes an owner reference, or sets a
Job's ttlSecondsAfterFinished, is judged as a DELETE of that object too (klockproxy.judge,
klockproxy.core.owners).

Known limits (documented, deliberate):

* controllers act behind the proxy (Klock, an admission webhook, sees their deletions; a proxy
  cannot): scaling an unlocked owner down or to zero, deleting a node (pod GC), NoExecute
  taints, preemption, dependents of kinds outside ``DEPENDENT_KINDS`` (custom resources);
* deletecollection carries no precondition (an object relabelled between the list and the
  delete is deleted); one carrying resourceVersion(Match) is refused;
* the reachability probe is a TCP connect, skipped within ``PROBE_FRESH`` seconds of a
  successful upstream connect (a whole kubectl run would otherwise pay a connect for it; the
  first failed connect makes the next request probe again). What it misses (an API server
  going down after it, a TLS failure, a reset) is answered by mitmproxy's own error path,
  which the HTTP layer turns into a 503 Status (upstream_errors) with mitmproxy's cause;
  a response already streaming when the API server goes away is cut (its headers are sent);
* server-side apply is judged on the merged result, on the configuration alone and on the
  result computed from managedFields, not by a full field-ownership implementation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import json
import logging
import os.path
import time
import traceback
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import mitmproxy.proxy.server
from mitmproxy import connection, ctx, exceptions, http, tcp
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.tls import ClientTLSLayer
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from klockproxy.audit import AuditLog
from klockproxy.cluster.discovery import ResourceScopes
from klockproxy.cluster.identity import IdentityResolver, ReviewRefused, is_auth_header
from klockproxy.cluster.lock_sources import CLUSTER_SPEC, LockSet, create_lock_sources
from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import TokenFile, Upstream, UpstreamConfig, UpstreamStatusError
from klockproxy.core.codec import media_type
from klockproxy.core.engine import Engine, is_lock_resource
from klockproxy.core.errors import (
    ClassificationError,
    ConfigError,
    KlockProxyError,
    LockValidationError,
    MalformedRequestError,
    Refusal,
    UnservedRouteError,
    UpstreamError,
)
from klockproxy.core.guards import body_refusal
from klockproxy.core.locks import load_locks_from_path
from klockproxy.core.paths import classify_request, may_be_connect
from klockproxy.core.requests import RequestInfo, check_header_fields, check_method, check_target
from klockproxy.core.routes import check_route, needs_discovery
from klockproxy.core.status import Status, failure, to_bytes
from klockproxy.core.types import UserInfo
from klockproxy.judge import Judge, Lookups, Verdict, needs_judgement, query_pairs, write_path
from klockproxy.judge.boundary import refusal_of
from klockproxy.metrics import Metrics
from klockproxy.proxy.body_limit import limit_body
from klockproxy.proxy.upstream_deadlines import UpstreamDeadlines
from klockproxy.proxy.upstream_errors import answer_with_status, error_response

logger = logging.getLogger(__name__)

# Long enough that no interactive session or quiet watch is cut in practice; dead peers are
# still noticed by TCP itself. mitmproxy's own value is 600 s.
DEFAULT_IDLE_TIMEOUT = 7 * 24 * 3600
PROBE_TIMEOUT = 5.0
# A successful upstream connect this recent (seconds) stands in for the reachability probe.
PROBE_FRESH = 2.0

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MARK = "klockproxy"
# The request's one classification (classify_request runs once per request): the fast path,
# the namespace checks and the judgement all read this object.
_INFO = "klockproxy.request"
_PASS = "pass"
_JUDGE = "judge"
_ANSWERED = "answered"
# A Lock write whose 2xx answer is applied to the lock set before it is returned.
_LOCK_WRITE = "klockproxy-lock-write"
# A write allowed on the ownership index's version (Verdict.on_index): the caller's body and
# Content-Type, to judge it again if the index lagged behind (409).
_ON_INDEX = "klockproxy-on-index"
# Flow metadata a front addon (the gateway) may set: who the request runs as, and who asked
# for that when it is an impersonation (UserInfo). Used for the audit log.
USER_METADATA = "klockproxy-user"
IMPERSONATED_BY_METADATA = "klockproxy-impersonated-by"

# mitmproxy options the addon reads: what the lookups default to (upstream address, CA,
# client certificate), and stream_large_bodies (refused, see _parse_options).
_FOREIGN_OPTIONS = frozenset(
    {
        "mode",
        "ssl_verify_upstream_trusted_ca",
        "client_certs",
        "ssl_insecure",
        "stream_large_bodies",
    }
)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Settings:
    """The addon's options, parsed once per change."""

    locks: tuple[str, ...]
    default_namespace: str
    upstream: UpstreamConfig | None
    client_token: bytes | None = field(default=None, repr=False)
    upstream_token_file: str | None = None
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT


def _opt(value: str) -> str | None:
    return value or None


def _reverse_target(modes: Sequence[str]) -> str | None:
    """``https://host:port`` of the first ``reverse:`` mode, if any."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if isinstance(mode, mode_specs.ReverseMode) and mode.scheme in ("http", "https"):
            host, port = mode.address
            if ":" in host:
                host = f"[{host}]"  # IPv6 literal
            return f"{mode.scheme}://{host}:{port}"
    return None


def _read_secret(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    if not data:
        raise ConfigError(f"{what} {path} is empty")
    return data


# WebSocket clients that cannot set headers (browsers) send the bearer token as a
# subprotocol; the API server accepts it when there is no Authorization header.
_WS_TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io."


def _websocket_token(headers: http.Headers) -> str | None:
    for value in headers.get_all("sec-websocket-protocol"):
        for protocol in value.split(","):
            protocol = protocol.strip()
            if protocol.startswith(_WS_TOKEN_PROTOCOL):
                encoded = protocol[len(_WS_TOKEN_PROTOCOL) :]
                try:
                    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                    return raw.decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    return None
    return None


def _drop_websocket_token(headers: http.Headers) -> None:
    """Local mode: the proxy alone chooses the credentials, a subprotocol token included."""
    values = headers.get_all("sec-websocket-protocol")
    if not values:
        return
    kept = [
        protocol.strip()
        for value in values
        for protocol in value.split(",")
        if protocol.strip() and not protocol.strip().startswith(_WS_TOKEN_PROTOCOL)
    ]
    if kept:
        headers["Sec-WebSocket-Protocol"] = ", ".join(kept)
    else:
        del headers["sec-websocket-protocol"]


def auth_headers(headers: http.Headers) -> dict[str, list[str]]:
    """The headers deciding who a request runs as (Authorization, Impersonate-*).

    A WebSocket subprotocol token counts as ``Authorization: Bearer`` when there is no
    Authorization header, as the API server reads it.
    """
    out: dict[str, list[str]] = {}
    for name in headers:
        if is_auth_header(name):
            out[name] = headers.get_all(name)
    if "authorization" not in headers and (token := _websocket_token(headers)):
        out["Authorization"] = [f"Bearer {token}"]
    return out


class KlockProxy:
    """The mitmproxy addon (options ``klock_*``; see the module docstring)."""

    def __init__(
        self,
        lock_set: LockSet | None = None,
        upstream: Lookups | None = None,
        identity: IdentityResolver | None = None,
        *,
        probe_timeout: float = PROBE_TIMEOUT,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        ownership: OwnershipIndex | None = None,
    ) -> None:
        # A lock set or lookups given here (local mode, the gateway, tests) is the caller's:
        # kept, and started and stopped by the caller. One left out is the addon's, built
        # from the klock_* options in ``configure`` and rebuilt when they change.
        self._injected_lock_set = lock_set is not None
        self._injected_upstream = upstream is not None
        self.lock_set: LockSet | None = lock_set
        self.upstream: Lookups | None = upstream
        self.identity: IdentityResolver | None = identity
        if identity is None and upstream is not None:
            self.identity = IdentityResolver(upstream)
        # The ownership index (what the garbage collector would delete), on the proxy's own
        # upstream only: injected lookups that cannot watch keep the per-request search.
        self.ownership: OwnershipIndex | None = ownership or _ownership_index(upstream)
        self.audit = audit
        self.metrics = metrics
        self.settings: Settings | None = None
        self._probe_timeout = probe_timeout
        self._upstream_token: TokenFile | None = None
        self._running = False
        self._started_lock_set: LockSet | None = None
        # Strong references to background tasks (lock set swaps) so they are not collected.
        self._tasks: set[asyncio.Task[None]] = set()
        # Open upstream connections per client connection (client id -> count): while a
        # client has one, the API server is known to be reachable and the probe is skipped.
        # Per connection, not per flow; dropped when the client disconnects.
        self._upstream_open: dict[str, int] = {}
        # Upstream address -> time.monotonic() of its last successful connect (probe cache);
        # an address is dropped when a connect to it fails.
        self._connected_at: dict[tuple[str, int], float] = {}
        # Scopes of kinds the static route table does not know (discovery, cached).
        self._scopes: ResourceScopes | None = None
        self._scopes_client: Lookups | None = None
        # mitmproxy's own idle timeout, restored when the addon is done.
        self._saved_tcp_timeout: int | None = None
        # mitmproxy loads these with the addon (hooks and options of their own).
        self.addons = [UpstreamDeadlines()]

    # ------------------------------------------------------------------------------------
    # mitmproxy lifecycle

    def load(self, loader: Any) -> None:
        """Declare the ``klock_*`` options."""
        # hpack logs every header it (de)compresses at DEBUG, bearer tokens included.
        # mitmproxy's own command line quiets it; an embedding Master may not.
        for noisy in ("hpack", "h2"):
            if logging.getLogger(noisy).level < logging.WARNING:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        loader.add_option(
            "klock_locks",
            Sequence[str],
            [CLUSTER_SPEC],
            "Lock sources: 'cluster' (watch Lock objects in the API server) and/or lock files "
            "or directories (reloaded on change).",
        )
        loader.add_option(
            "klock_default_namespace",
            str,
            "default",
            "Namespace of Locks in lock files that do not name one.",
        )
        loader.add_option(
            "klock_upstream",
            str,
            "",
            "API server URL for the proxy's own lookups; default: the reverse-mode target.",
        )
        loader.add_option(
            "klock_upstream_ca",
            str,
            "",
            "CA file for the lookups; default: ssl_verify_upstream_trusted_ca.",
        )
        loader.add_option(
            "klock_upstream_token_file",
            str,
            "",
            "Bearer token the proxy attaches upstream (local mode) and uses for its lookups "
            "when the caller sends none; in pass-through mode it lets the proxy see what a "
            "cascading DELETE would delete when the caller may not list it (and the cluster "
            "lock source needs it).",
        )
        loader.add_option(
            "klock_upstream_client_cert",
            str,
            "",
            "Client certificate (PEM) for the lookups; default: client_certs when it is a file.",
        )
        loader.add_option(
            "klock_upstream_client_key",
            str,
            "",
            "Key of klock_upstream_client_cert (default: the same file).",
        )
        loader.add_option(
            "klock_upstream_insecure",
            bool,
            False,
            "Do not verify the API server certificate on lookups (also implied by ssl_insecure).",
        )
        loader.add_option(
            "klock_client_token_file",
            str,
            "",
            "Local mode: every client must send 'Authorization: Bearer <this token>' (else "
            "401); the proxy replaces it with the upstream credentials.",
        )
        loader.add_option(
            "klock_idle_timeout",
            int,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds before an idle client connection is closed (mitmproxy's fixed 600 s would "
            "cut idle watches, logs -f and exec sessions).",
        )

    def configure(self, updated: set[str]) -> None:
        """Parse the options into ``self.settings``; (re)create lock set and upstream."""
        relevant = any(n.startswith("klock_") or n in _FOREIGN_OPTIONS for n in updated)
        if not relevant and self.settings is not None:
            return
        # Lock files are validated when they are named (first configure, or klock_locks /
        # klock_default_namespace changed), not again for every other klock_ option: parsing
        # 10,000 Locks on the event loop stalls every request for a second.
        lock_options = {"klock_locks", "klock_default_namespace"}
        validate = self.settings is None or bool(lock_options & set(updated))
        try:
            settings = self._parse_options(validate_lock_files=validate)
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        old = self.settings
        self.settings = settings
        # The only way to change mitmproxy's idle timeout: it is read by every new connection.
        # The value found first is restored in ``done`` (the module is process-wide).
        if self._saved_tcp_timeout is None:
            self._saved_tcp_timeout = mitmproxy.proxy.server.TCP_TIMEOUT
        mitmproxy.proxy.server.TCP_TIMEOUT = settings.idle_timeout
        self._upstream_token = (
            TokenFile(settings.upstream_token_file) if settings.upstream_token_file else None
        )
        if not self._injected_upstream and (old is None or old.upstream != settings.upstream):
            if self.upstream is not None:
                self._spawn(self.upstream.close())
            self.upstream = Upstream(settings.upstream) if settings.upstream else None
            self.identity = IdentityResolver(self.upstream) if self.upstream else None
            if self.ownership is not None:
                self._spawn(self.ownership.stop())
            self.ownership = _ownership_index(self.upstream)
            if self._running and self.ownership is not None:
                self._spawn(self._start_ownership(self.ownership))
        if not self._injected_lock_set and (
            old is None
            or (old.locks, old.default_namespace, old.upstream)
            != (settings.locks, settings.default_namespace, settings.upstream)
        ):
            try:
                lock_set = create_lock_sources(
                    settings.locks, settings.upstream, settings.default_namespace
                )
            except ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e
            self.lock_set = lock_set
            if self._running:
                self._spawn(self._start_lock_set(lock_set))

    def _parse_options(self, *, validate_lock_files: bool = True) -> Settings:
        opts = ctx.options
        locks = tuple(s.strip() for s in opts.klock_locks if s.strip())
        if not locks and not self._injected_lock_set:
            # An empty value (say, an unset shell variable) would enforce nothing, silently.
            # (An injected lock set is its owner's choice.)
            raise ConfigError("klock_locks is empty: name 'cluster' and/or lock files")
        for spec in locks:
            # An injected lock set was loaded (and its files validated) by its owner: parsing
            # 10,000 Locks again here would stall the event loop for a second.
            if spec != CLUSTER_SPEC and not self._injected_lock_set and validate_lock_files:
                # Validate lock files now: a broken file must stop the start, not leave every
                # mutation refused with 503.
                try:
                    load_locks_from_path(spec, opts.klock_default_namespace)
                except LockValidationError as e:
                    raise ConfigError(f"invalid lock source {spec}: {e}") from e
                except OSError as e:
                    raise ConfigError(f"cannot read lock source {spec}: {e}") from e
        server = opts.klock_upstream or _reverse_target(opts.mode if "mode" in opts else [])
        upstream: UpstreamConfig | None = None
        if server:
            ca = opts.klock_upstream_ca or (
                opts.ssl_verify_upstream_trusted_ca
                if "ssl_verify_upstream_trusted_ca" in opts
                else None
            )
            cert = opts.klock_upstream_client_cert or None
            client_certs = opts.client_certs if "client_certs" in opts else None
            if cert is None and client_certs and os.path.isfile(client_certs):
                cert = client_certs
            insecure = opts.klock_upstream_insecure or (
                bool(opts.ssl_insecure) if "ssl_insecure" in opts else False
            )
            upstream = UpstreamConfig(
                server=server,
                ca_file=ca or None,
                token_file=_opt(opts.klock_upstream_token_file),
                client_cert_file=cert,
                client_key_file=_opt(opts.klock_upstream_client_key) or cert,
                insecure=insecure,
            )
        elif not self._injected_upstream:
            raise ConfigError(
                "klockproxy needs the API server: run in --mode reverse:https://API or set "
                "klock_upstream"
            )
        if "stream_large_bodies" in opts and opts.stream_large_bodies:
            # mitmproxy would start forwarding a large body before the request hook, i.e.
            # before a covered write is judged. Responses are streamed by the addon anyway.
            raise ConfigError(
                "klockproxy cannot judge writes whose bodies mitmproxy streams: unset "
                "stream_large_bodies (the addon streams every response itself)"
            )
        client_token = None
        if opts.klock_client_token_file:
            client_token = _read_secret(opts.klock_client_token_file, "the client token file")
        if opts.klock_idle_timeout <= 0:
            raise ConfigError("klock_idle_timeout must be a positive number of seconds")
        return Settings(
            locks=locks,
            default_namespace=opts.klock_default_namespace,
            upstream=upstream,
            client_token=client_token,
            upstream_token_file=_opt(opts.klock_upstream_token_file),
            idle_timeout=opts.klock_idle_timeout,
        )

    async def running(self) -> None:
        """Start the lock sources; switch mitmproxy to lazy upstream connections."""
        self._running = True
        opts = ctx.options
        if self.settings is None:
            # A bare Master only calls configure on option changes: parse them now.
            try:
                self.configure(set(opts.keys()))
            except exceptions.OptionsError as e:
                logger.error("klockproxy: invalid options, refusing every request: %s", e)
        if "connection_strategy" in opts and opts.connection_strategy != "lazy":
            # With "eager", mitmproxy resets the client's TLS handshake when the API server is
            # down, before any hook can answer; "lazy" lets the addon answer a readable Status.
            logger.info("klockproxy: setting connection_strategy=lazy")
            opts.connection_strategy = "lazy"
        if self.lock_set is not None:
            await self._start_lock_set(self.lock_set)
        if self.ownership is not None:
            await self._start_ownership(self.ownership)

    async def _start_ownership(self, index: OwnershipIndex) -> None:
        reason = await index.permitted()
        if reason:
            # Fail closed would refuse every judged write for good: keep the per-request
            # search instead, and say so loudly (README, "Deletions, by consequence").
            logger.warning(
                "klockproxy: no ownership index (%s): cascades are searched per request among "
                "common kinds only; grant list and watch on every resource to enable it",
                reason,
            )
            if self.ownership is index:
                self.ownership = None
            await index.stop()
            return
        await index.start()
        engine = self._engine()
        if engine is not None:
            index.follow(engine)
        lock_set = self.lock_set
        if lock_set is None:
            return
        # Follow the lock set's namespaces as they change, not only when a request comes.
        previous = lock_set.on_change

        def changed() -> None:
            if previous is not None:
                previous()
            current = lock_set.engine
            if current is not None and self.ownership is index:
                index.follow(current)

        lock_set.on_change = changed

    async def done(self) -> None:
        """Stop the lock sources and close upstream connections."""
        self._running = False
        if self.ownership is not None:
            await self.ownership.stop()
        if self._started_lock_set is not None and not self._injected_lock_set:
            await self._started_lock_set.stop()
        self._started_lock_set = None
        if self.upstream is not None and not self._injected_upstream:
            await self.upstream.close()
        for task in list(self._tasks):
            task.cancel()
        if self._saved_tcp_timeout is not None:
            mitmproxy.proxy.server.TCP_TIMEOUT = self._saved_tcp_timeout
            self._saved_tcp_timeout = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_lock_set(self, lock_set: LockSet) -> None:
        previous = self._started_lock_set
        if previous is lock_set:
            return
        if self._injected_lock_set:
            # Whoever injected it owns its lifecycle (serve.py starts it before the proxy).
            self._started_lock_set = lock_set
            return
        try:
            await lock_set.start()
        except KlockProxyError as e:
            logger.error("klockproxy: lock sources failed to start: %s", e)
            return
        self._started_lock_set = lock_set
        logger.info("klockproxy: lock sources: %s", lock_set.describe())
        if previous is not None:
            await previous.stop()

    # ------------------------------------------------------------------------------------
    # Per-connection hooks

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Plain HTTP on the HTTPS port gets nothing: the connection is closed unanswered;
        the HTTP layer of every other connection answers upstream failures with a Status
        (klockproxy.proxy.upstream_errors).

        mitmproxy's reverse mode serves a client that does not start with a TLS record as
        plain HTTP on the same port; kubectl never does that, and the bearer token would
        cross the network in the clear (issue 10 item 10).
        """
        context = nextlayer.context
        mode = context.client.proxy_mode
        if (
            isinstance(mode, mode_specs.ReverseMode)
            and mode.scheme == "https"
            and context.client.transport_protocol == "tcp"
            and not context.client.tls
            # The connection's first decision (NextLayer may have stacked its choice already):
            # no client TLS layer in it, and the client's first bytes are not a TLS record.
            and isinstance(context.layers[0], modes.ReverseProxy)
            and not any(isinstance(each, ClientTLSLayer) for each in context.layers)
            and not starts_like_tls_record(nextlayer.data_client())
        ):
            logger.info(
                "klockproxy: closed a connection from %s that does not start with TLS",
                context.client.peername[0] if context.client.peername else "?",
            )
            nextlayer.layer = _CloseClient(context)
            return
        # mitmproxy's HTML error pages (upstream down, TLS verification failed, reset) become
        # a Status kubectl prints readably.
        answer_with_status(nextlayer)

    # ------------------------------------------------------------------------------------
    # Per-request hooks

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Authenticate (local mode), classify, pick the fast path or mark for judging."""
        if flow.response is not None:
            # A front addon (the gateway's caller authentication) already answered.
            return
        req = flow.request
        try:
            check_message(req)
        except MalformedRequestError as e:
            self._answer(flow, failure(400, f"klockproxy: malformed request: {e}"), quiet=True)
            return
        settings = self.settings
        if settings is None:
            # The options did not parse (mitmproxy logged why): nothing is known about the
            # client token or the locks, so nothing passes.
            self._answer(flow, failure(503, "klockproxy is not configured (see the proxy log)"))
            return
        if settings.client_token is not None:
            if not self._client_token_ok(req.headers, settings.client_token):
                self._answer(flow, failure(401, "Unauthorized"))
                return
            del req.headers["authorization"]
            _drop_websocket_token(req.headers)
            if self._upstream_token is not None:
                try:
                    token = self._upstream_token.token()
                except ConfigError as e:
                    logger.error("klockproxy: %s", e)
                    self._answer(flow, failure(503, f"klockproxy: {e}"))
                    return
                req.headers["Authorization"] = f"Bearer {token}"

        mark = self._triage(flow)
        if mark != _ANSWERED:
            mark = await self._check_scope(flow, mark)
        if mark == _ANSWERED:
            return
        flow.metadata[_MARK] = mark
        if (err := await self._probe(flow)) is not None:
            self._answer(flow, err)
            # On discovery paths kubectl prints a text answer, not a Status (upstream_errors).
            flow.response = error_response(req.path, err["code"], err["message"])
            return
        if mark == _PASS:
            self._count(flow, "passed")
        if mark == _PASS and self._streamable(req):
            req.stream = True
        elif mark == _JUDGE:
            # Another addon (StreamBodies) may have asked for streaming: a covered write must
            # be complete before it is judged; and never bigger than the API server accepts.
            req.stream = False
            limit_body(flow)

    def _triage(self, flow: http.HTTPFlow) -> str:
        """PASS (forward untouched), JUDGE (needs the body and a decision) or ANSWERED."""
        req = flow.request
        method = req.method.upper()
        try:
            info = classification(flow)
        except MalformedRequestError as e:
            # check_message refused these already; kept for a target rewritten by another addon.
            self._answer(flow, failure(400, f"klockproxy: malformed request: {e}"), quiet=True)
            return _ANSWERED
        except ClassificationError as e:
            # GET/HEAD/OPTIONS are reads, except on exec/attach/portforward/proxy (CONNECT).
            if method in _READ_METHODS and not may_be_connect(req.path):
                return _PASS
            self._answer(
                flow,
                failure(400, f"klockproxy: refusing {method} {req.path.split('?')[0]!r}: {e}"),
            )
            return _ANSWERED
        if not info.is_mutation or is_lock_resource(info.ref):
            return _PASS
        if len(req.headers.get_all("content-type")) > 1:
            # Go reads the first value, mitmproxy joins them: the two would disagree.
            self._answer(flow, failure(400, "klockproxy: more than one Content-Type header"))
            return _ANSWERED
        engine = self._engine()
        if engine is None:
            self._answer(flow, self._not_ready())
            return _ANSWERED
        covered = needs_judgement(info, engine, req.headers.get("content-type", ""))
        return _JUDGE if covered else _PASS

    async def _check_scope(self, flow: http.HTTPFlow, mark: str) -> str:
        """A mutation of a kind the route table does not know, addressed without a namespace:
        its scope comes from discovery, and a namespaced kind is refused (not served).

        Returns the mark (PASS when the kind turns out not to have the subresource: the API
        server answers 404) or ANSWERED.
        """
        info = flow.metadata.get(_INFO)
        if not isinstance(info, RequestInfo) or not needs_discovery(info):
            return mark
        method, path = flow.request.method.upper(), flow.request.path.split("?")[0]
        upstream = self.upstream
        if upstream is None:
            self._answer(flow, failure(503, "klockproxy: no API server configured for lookups"))
            return _ANSWERED
        if self._scopes is None or self._scopes_client is not upstream:
            self._scopes, self._scopes_client = ResourceScopes(upstream), upstream
        try:
            kind = await self._scopes.kind(
                info.group, info.version, info.resource, auth_headers(flow.request.headers)
            )
            checked = check_route(info, kind)
        except UnservedRouteError as e:
            self._answer(flow, failure(400, f"klockproxy: refusing {method} {path!r}: {e}"))
            return _ANSWERED
        except UpstreamStatusError as e:
            code = e.code if e.code in (401, 403) else 503
            self._answer(
                flow, failure(code, f"klockproxy: cannot read the API server's discovery: {e}")
            )
            return _ANSWERED
        except UpstreamError as e:
            self._answer(flow, failure(503, f"klockproxy: cannot check the request: {e}"))
            return _ANSWERED
        if checked is not info:
            flow.metadata[_INFO] = checked
            if not checked.served:
                return _PASS
        return mark

    async def request(self, flow: http.HTTPFlow) -> None:
        """Judge covered mutations; fix HTTP/2 body framing of what is forwarded."""
        if flow.response is not None:
            return
        if flow.metadata.get(_MARK) == _JUDGE:
            await self._judge(flow)
        if flow.response is None:
            self._fix_framing(flow.request)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream every upstream response: watches and ``logs -f`` must not be buffered."""
        resp = flow.response
        if resp is None or flow.metadata.get(_MARK) == _ANSWERED:
            return
        if self.metrics is not None and flow.request.timestamp_end and resp.timestamp_start:
            self.metrics.upstream_latency.observe(
                max(0.0, resp.timestamp_start - flow.request.timestamp_end)
            )
        if self._lock_write(flow, resp.status_code) or _ON_INDEX in flow.metadata:
            # Buffered, not streamed: response() reads it before the client sees it.
            return
        if resp.status_code != 101:
            resp.stream = True

    def _lock_write(self, flow: http.HTTPFlow, status_code: int) -> bool:
        """Mark a successful, real (not dry-run) write of Lock objects (read your own writes)."""
        if not 200 <= status_code < 300 or flow.request.method.upper() not in _WRITE_METHODS:
            return False
        if self.lock_set is None or not self.lock_set.watches_cluster:
            return False
        info = flow.metadata.get(_INFO)
        if not isinstance(info, RequestInfo):
            return False
        if not info.is_mutation or info.dry_run or not is_lock_resource(info.ref):
            return False
        # Plain strings: flow metadata may be saved with the flow.
        flow.metadata[_LOCK_WRITE] = (info.verb, info.namespace, info.name)
        return True

    async def response(self, flow: http.HTTPFlow) -> None:
        """A Lock written through the proxy is in force before its answer is returned; a
        write allowed on the ownership index's version is judged again if that version was
        not the API server's, and what it stored is the index's version from now on."""
        on_index = flow.metadata.pop(_ON_INDEX, None)
        if on_index is not None and flow.response is not None:
            await self._settle_on_index(flow, *on_index)
        write = flow.metadata.pop(_LOCK_WRITE, None)
        if write is None or flow.response is None or self.lock_set is None:
            return
        verb, namespace, name = write
        body = flow.response.get_content(strict=False) or b""
        await self.lock_set.apply_write_response(verb, namespace, name, body)

    async def _settle_on_index(self, flow: http.HTTPFlow, body: bytes, content_type: str) -> None:
        """After a write allowed on the index's version of the object (``Verdict.on_index``):
        a 409 means the API server held another version, unjudged: nothing was written, and
        the request is judged again as if there were no index, then sent again by the proxy.
        The object as stored is the index's version from then on (read your own writes)."""
        resp = flow.response
        if resp is not None and resp.status_code == 409:
            await self._judge_again(flow, body, content_type)
            resp = flow.response
        if resp is None or not 200 <= resp.status_code < 300 or self.ownership is None:
            return
        info = flow.metadata.get(_INFO)
        if not isinstance(info, RequestInfo) or info.dry_run:
            return  # a dry run's answer was not stored
        if media_type(resp.headers.get("content-type", "")) != "application/json":
            return  # protobuf, or a Table: the watch will tell
        try:
            stored = json.loads(resp.get_content(strict=False) or b"")
        except ValueError:
            return
        if isinstance(stored, dict):
            self.ownership.wrote(stored)

    async def _judge_again(self, flow: http.HTTPFlow, body: bytes, content_type: str) -> None:
        """Judge the caller's write again without the index's shortcut (``fresh``) and send
        it again as the caller: the answer to that is the caller's answer."""
        info = flow.metadata.get(_INFO)
        engine = self._engine()
        if not isinstance(info, RequestInfo) or engine is None or self.upstream is None:
            self._answer(flow, failure(503, "klockproxy: cannot judge the write again"))
            return
        # Counted once (allowed); the audit log gets the second judgement too.
        flow.metadata[_MARK] = _ANSWERED
        headers = auth_headers(flow.request.headers)
        try:
            verdict = await Judge(self.upstream, self.identity, engine, self.ownership).judge(
                info, headers, body, content_type, fresh=True
            )
            await self._record(flow, info, verdict)
            if verdict.status is not None:
                self._answer(flow, verdict.status, verdict.log_message)
                return
            code, answer_type, answer = await self.upstream.send(
                flow.request.method.upper(),
                write_path(info),
                query_pairs(info),
                headers,
                verdict.body if verdict.body is not None else body,
                verdict.content_type or content_type,
                flow.request.headers.get("accept", ""),
            )
        except KlockProxyError as e:
            # The one error boundary: the API server out of reach is a 503, as in _judge.
            refusal = refusal_of(e)
            self._answer(flow, refusal.status, refusal.log_message)
            return
        except Exception as e:
            self._internal_error(flow, e)
            return
        flow.response = http.Response.make(
            code, answer, {"Content-Type": answer_type} if answer_type else {}
        )

    def error(self, flow: http.HTTPFlow) -> None:
        """Log proxy-side failures (never headers or bodies)."""
        if flow.error is not None:
            # Before a response it is an upstream failure worth a warning; afterwards it is
            # usually a client ending a watch or `logs -f`.
            level = logging.WARNING if flow.response is None else logging.DEBUG
            logger.log(
                level,
                "klockproxy: %s %s failed: %s",
                flow.request.method,
                flow.request.path.split("?")[0],
                flow.error.msg,
            )

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Forget relayed WebSocket messages (mitmproxy keeps them all by default)."""
        if flow.websocket is not None:
            flow.websocket.messages.clear()

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """Forget relayed raw TCP messages (SPDY exec/port-forward tunnels)."""
        flow.messages.clear()

    def server_connected(self, data: ServerConnectionHookData) -> None:
        """Remember that this client has a live upstream connection (no probe needed)."""
        key = data.client.id
        self._upstream_open[key] = self._upstream_open.get(key, 0) + 1
        if data.server.address is not None:
            self._connected_at[_addr(data.server.address)] = time.monotonic()

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        """An upstream connect failed: the next new connection probes first again."""
        if data.server.address is not None:
            self._connected_at.pop(_addr(data.server.address), None)

    def server_disconnected(self, data: ServerConnectionHookData) -> None:
        """Forget a closed upstream connection."""
        key = data.client.id
        left = self._upstream_open.get(key, 0) - 1
        if left > 0:
            self._upstream_open[key] = left
        else:
            self._upstream_open.pop(key, None)

    def client_disconnected(self, client: connection.Client) -> None:
        """Drop the per-connection bookkeeping."""
        self._upstream_open.pop(client.id, None)

    # ------------------------------------------------------------------------------------
    # Helpers

    @staticmethod
    def _client_token_ok(headers: http.Headers, expected: bytes) -> bool:
        values = headers.get_all("authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(" ")
        # Always compare (even on a wrong scheme) so the timing does not tell which part failed.
        match = hmac.compare_digest(token.strip().encode("utf-8", "replace"), expected)
        return match and scheme.lower() == "bearer"

    def _engine(self) -> Engine | None:
        return self.lock_set.engine if self.lock_set is not None else None

    def _not_ready(self) -> Status:
        detail = self.lock_set.describe() if self.lock_set is not None else "no lock source"
        return failure(503, f"klockproxy: locks are not loaded yet ({detail}); retry shortly")

    @staticmethod
    def _streamable(req: http.Request) -> bool:
        # mitmproxy forwards a streamed HTTP/2 body without Content-Length to an HTTP/1.1
        # upstream with no framing at all; such requests are buffered and framed instead.
        return not (req.is_http2 or req.is_http3) or "content-length" in req.headers

    @staticmethod
    def _fix_framing(req: http.Request) -> None:
        if req.stream or not (req.is_http2 or req.is_http3):
            return
        if req.raw_content and "content-length" not in req.headers:
            req.headers["content-length"] = str(len(req.raw_content))

    def _count(self, flow: http.HTTPFlow, verdict: str) -> None:
        if self.metrics is not None:
            # The verb of the one classification (the HTTP method for what was not classified).
            info = flow.metadata.get(_INFO)
            verb = info.verb if isinstance(info, RequestInfo) else flow.request.method
            self.metrics.request(verb, verdict)

    def _answer(
        self,
        flow: http.HTTPFlow,
        status: Status,
        log_message: str | None = None,
        *,
        quiet: bool = False,
        verdict: str = "refused",
    ) -> None:
        if flow.metadata.get(_MARK) != _ANSWERED:
            self._count(flow, verdict)
        flow.metadata[_MARK] = _ANSWERED
        flow.response = http.Response.make(
            status["code"], to_bytes(status), {"Content-Type": "application/json"}
        )
        if quiet:
            # The target of a malformed request may carry anything (a smuggled request and its
            # credentials): the method and path are not logged.
            logger.info("klockproxy: refused a request: %s", log_message or status["message"])
        elif status["code"] >= 500 or status["code"] == 401:
            logger.warning(
                "klockproxy: answered %s %s with %d: %s",
                flow.request.method,
                flow.request.path.split("?")[0],
                status["code"],
                log_message or status["message"],
            )
        else:
            logger.info(
                "klockproxy: refused %s %s: %s",
                flow.request.method,
                flow.request.path.split("?")[0],
                log_message or status["message"],
            )

    async def _probe(self, flow: http.HTTPFlow) -> Status | None:
        """A 503 Status when a new upstream connection is due and the API server is down."""
        conn = flow.server_conn
        if conn.connected or conn.address is None or flow.client_conn.id in self._upstream_open:
            # With connection_strategy=lazy (and HTTP/2 clients) mitmproxy opens upstream
            # connections beside flow.server_conn, which then never reads as connected: the
            # per-client count from server_connected/server_disconnected tells instead.
            return None
        host, port = conn.address[0], conn.address[1]
        connected_at = self._connected_at.get((host, port))
        if connected_at is not None and time.monotonic() - connected_at < PROBE_FRESH:
            return None
        logger.debug("klockproxy: probing the API server %s:%s", host, port)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self._probe_timeout
            )
        except (OSError, TimeoutError) as e:
            reason = str(e) or type(e).__name__
            scheme = flow.request.scheme
            return failure(
                503,
                f"klockproxy: the API server {scheme}://{host}:{port} cannot be reached: {reason}",
            )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    # ------------------------------------------------------------------------------------
    # Judging covered mutations (klockproxy.judge)

    async def _judge(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        # Decoded once (Content-Encoding), however often the judge and the addon read it.
        read = functools.cache(functools.partial(_body, req))
        try:
            info = flow.metadata.get(_INFO)
            if not isinstance(info, RequestInfo):
                # _triage marks a flow for judging only after classifying it.
                raise Refusal(failure(500, "klockproxy: the request was not classified"))
            engine = self._engine()
            if engine is None:
                raise Refusal(self._not_ready())
            if self.upstream is None or self.identity is None:
                raise Refusal(failure(503, "klockproxy: no API server configured for lookups"))
            verdict = await Judge(self.upstream, self.identity, engine, self.ownership).judge(
                info,
                auth_headers(req.headers),
                read,
                req.headers.get("content-type", ""),
            )
            await self._record(flow, info, verdict)
            if verdict.status is not None:
                if verdict.locks:
                    self._answer(flow, verdict.status, verdict.log_message, verdict="denied")
                    return
                raise Refusal(verdict.status, verdict.log_message)
            self._count(flow, "allowed")
            if verdict.on_index:
                flow.metadata[_ON_INDEX] = (read(), req.headers.get("content-type", ""))
            if verdict.body is not None:
                # Re-encoded with the request's Content-Encoding by mitmproxy.
                req.content = verdict.body
                if verdict.content_type is not None:
                    req.headers["content-type"] = verdict.content_type
        except Refusal as r:
            self._answer(flow, r.status, r.log_message)
        except Exception as e:
            self._internal_error(flow, e)

    def _internal_error(self, flow: http.HTTPFlow, e: Exception) -> None:
        """Fail closed on a bug rather than forward a write nobody judged. The exception's
        message may quote request data: its type and where it happened are logged only."""
        where = "".join(traceback.format_tb(e.__traceback__))
        logger.error(
            "klockproxy: internal error while checking locks: %s\n%s", type(e).__name__, where
        )
        self._answer(flow, failure(500, "klockproxy: internal error while checking locks"))

    async def _record(self, flow: http.HTTPFlow, info: RequestInfo, verdict: Verdict) -> None:
        """Metrics and the audit line of a judged mutation (never a credential or a body)."""
        if self.metrics is not None and verdict.locks:
            self.metrics.denied_by(verdict.locks)
        if self.audit is None:
            return
        user = flow.metadata.get(USER_METADATA)
        if not isinstance(user, UserInfo) and self.identity is not None:
            try:
                user = await self.identity.resolve(auth_headers(flow.request.headers))
            except (ReviewRefused, KlockProxyError):
                user = None
        by = flow.metadata.get(IMPERSONATED_BY_METADATA)
        if verdict.locks:
            outcome = "denied"
        elif verdict.status is not None:
            outcome = "refused"
        else:
            outcome = "allowed"
        self.audit.record_request(
            info,
            user=user if isinstance(user, UserInfo) else None,
            impersonated_by=by if isinstance(by, UserInfo) else None,
            verdict=outcome,
            locks=verdict.locks,
            code=verdict.status["code"] if verdict.status is not None else 200,
        )


class _CloseClient(layer.Layer):
    """A layer that closes the client connection and ignores whatever else arrives."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


def classification(flow: http.HTTPFlow) -> RequestInfo:
    """``classify_request`` of this flow's request, computed once and kept in
    ``flow.metadata``: every check of the request (a front addon's, the fast path, the
    namespace checks, the judgement) reads the same object. Raises ClassificationError."""
    info = flow.metadata.get(_INFO)
    if isinstance(info, RequestInfo):
        return info
    info = classify_request(flow.request.method.upper(), flow.request.path)
    flow.metadata[_INFO] = info
    return info


def check_message(req: http.Request) -> None:
    """MalformedRequestError unless the method, target, HTTP/2 pseudo-header fields and every
    header field keep to HTTP's grammar (klockproxy.core.requests), for HTTP/1.1 and HTTP/2
    clients alike. mitmproxy copies CR/LF of an HTTP/2 field into the HTTP/1.1 request it
    writes upstream; a ``#`` or an absolute-form authority is read differently upstream.
    """
    data = req.data
    try:
        method = data.method.decode("ascii")
    except UnicodeDecodeError as e:
        raise MalformedRequestError("the request method is not an HTTP token") from e
    check_method(method)
    check_target(data.path.decode("utf-8", "surrogateescape"))
    check_header_fields(data.headers.fields)
    for what, value in (("scheme", data.scheme), ("authority", data.authority)):
        if any(b <= 0x20 or b >= 0x7F for b in value):
            raise MalformedRequestError(f"the request {what} contains a space or control byte")
    # HTTP/1.1 absolute-form (``DELETE https://host/...``): mitmproxy forwards it as such, and
    # a front or server behind the proxy may route on that authority, not on the Host header.
    absolute_form = bool(data.authority) and not (req.is_http2 or req.is_http3)
    if absolute_form and data.authority.decode("ascii") != req.headers.get("host", ""):
        raise MalformedRequestError(
            "the absolute-form request target names another host than the Host header"
        )


def _addr(address: tuple[Any, ...]) -> tuple[str, int]:
    return str(address[0]), int(address[1])


def _ownership_index(upstream: Lookups | None) -> OwnershipIndex | None:
    """The ownership index over ``upstream`` when it can watch with credentials of its own.

    A pass-through proxy without any searches each cascade as the caller (ten common kinds
    only, see the README); injected stand-ins that cannot watch likewise.
    """
    if not isinstance(upstream, Upstream):
        return None
    if not upstream.has_own_credentials:
        logger.warning(
            "klockproxy: no credentials of the proxy's own (klock_upstream_token_file or a "
            "client certificate): no ownership index; cascades are searched per request "
            "among common kinds only (see README)"
        )
        return None
    return OwnershipIndex.over(upstream.config)


def _body(req: http.Request) -> bytes:
    """The request body with its Content-Encoding decoded (Refusal when it cannot be)."""
    try:
        body = req.get_content(strict=True)
    except ValueError as e:
        raise body_refusal(
            400, f"klockproxy: cannot decode the request body's Content-Encoding: {e}"
        ) from e
    return body or b""
