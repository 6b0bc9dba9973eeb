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
  denial is a 403 Status the way the API server words admission denials;
* an allowed write whose decision depended on the current object is made conditional on the
  checked ``resourceVersion`` (DeleteOptions preconditions, ``metadata.resourceVersion``, a
  JSON-patch ``test``; protobuf bodies get the fields appended, which protobuf merges), so a
  concurrent relabel makes it fail with 409 instead of slipping past a lock. This is done for
  every covered write judged against an existing object, not only when a lock matched it: a
  relabel racing an allowed write could just as well make a lock match. deletecollection
  cannot carry a precondition (documented limitation);
* everything fails closed: no locks loaded yet, lookups failing (other than 404), bodies that
  cannot be decoded -> a Status saying why; reads keep flowing.

Streams and long connections: WebSocket and raw TCP messages are not kept in memory; the idle
timeout mitmproxy hard-codes (``mitmproxy.proxy.server.TCP_TIMEOUT``, 600 s) is raised when
the addon is configured (``klock_idle_timeout``), because an idle ``exec -it``, ``logs -f`` or
watch must not be cut. mitmproxy answers an unreachable upstream with an HTML 502 that no hook
can replace (it is written by the protocol layer after the ``error`` hook), so before a flow
opens a new upstream connection the addon checks that the API server accepts TCP connections
and otherwise answers a 503 Status naming it. That needs ``connection_strategy=lazy`` (with
``eager`` mitmproxy resets the client's TLS handshake before any hook runs), which the addon
sets when the proxy starts.

Deletions that delete other objects are judged on what they would delete: a namespace (any
DELETE lock in it that applies to the caller refuses it), a CustomResourceDefinition (its
objects are listed and judged), deletecollection (the listed objects are judged), a cascading
DELETE (the dependents the garbage collector would delete among ``_DEPENDENT_KINDS`` of the
namespace, found by owner uid). A write that adds or changes an owner reference, or sets a
Job's ttlSecondsAfterFinished, is judged as a DELETE of that object too.

Known limits (documented, deliberate):

* controllers act behind the proxy (Klock, an admission webhook, sees their deletions; a proxy
  cannot): scaling an unlocked owner down or to zero, deleting a node (pod GC), NoExecute
  taints, preemption, dependents of kinds outside ``_DEPENDENT_KINDS`` (custom resources);
* deletecollection carries no precondition (an object relabelled between the list and the
  delete is deleted); one carrying resourceVersion(Match) is refused;
* the reachability probe is a TCP connect: an API server going down between the probe and
  mitmproxy's own connect, or a TLS failure, still gives mitmproxy's HTML 502;
* server-side apply is judged on the merged result, on the configuration alone and on the
  result computed from managedFields, not by a full field-ownership implementation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os.path
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote, unquote

import mitmproxy.proxy.server
from mitmproxy import connection, ctx, exceptions, http, tcp
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from klockproxy.core.engine import (
    DENIAL_PREFIX,
    Decision,
    Engine,
    is_exempt,
    is_lock_resource,
    who_may,
)
from klockproxy.core.errors import (
    ClassificationError,
    ConfigError,
    DecodeError,
    KlockProxyError,
    LockValidationError,
    PatchError,
    UpstreamError,
)
from klockproxy.core.locks import GROUP, load_locks_from_path
from klockproxy.core.metadata import decode_body, labels_of, load_yaml_documents, media_type
from klockproxy.core.patches import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    UnsupportedPatchError,
    apply_patch,
    kind_key_of,
)
from klockproxy.core.protobuf import (
    LEN,
    PROTOBUF_CONTENT_TYPE,
    decode_fields,
    encode_len_field,
    encode_string_field,
    encode_unknown,
    unwrap_unknown,
)
from klockproxy.core.requests import CONNECT_SUBRESOURCES, RequestInfo, classify
from klockproxy.core.status import Status, StatusDetails, failure, to_bytes
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo
from klockproxy.identity import IdentityResolver, is_auth_header
from klockproxy.lock_sources import CLUSTER_SPEC, LockSet, create_lock_sources
from klockproxy.upstream import TokenFile, Upstream, UpstreamConfig, UpstreamStatusError

logger = logging.getLogger(__name__)

# Long enough that no interactive session or quiet watch is cut in practice; dead peers are
# still noticed by TCP itself. mitmproxy's own value is 600 s.
DEFAULT_IDLE_TIMEOUT = 7 * 24 * 3600
PROBE_TIMEOUT = 5.0
# A uid no object has: "the object was absent when checked" (see add_precondition).
ABSENT_UID = "klockproxy-checked-absent"
# How many locked objects a deletecollection refusal names before summarising.
MAX_NAMED_OBJECTS = 10

_MARK = "klockproxy"
_PASS = "pass"
_JUDGE = "judge"
_ANSWERED = "answered"

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
# Writes through these may change the object's labels: judged on the new labels. (A pods/status
# update may change metadata.labels: the pod status strategy resets spec, not labels.)
_LABEL_SUBRESOURCES = frozenset({"", "status"})
_JSON_TYPES = frozenset({"", "application/json"})
_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
# Placeholder caller for a first decision: when no lock exempts anybody the caller does not
# matter and the identity lookup is skipped.
_NOBODY = UserInfo(username="")


class Lookups(Protocol):
    """What the addon needs from :class:`klockproxy.upstream.Upstream` (tests pass a fake)."""

    @property
    def server(self) -> str:
        """The API server URL, for messages."""
        ...

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        """GET as the caller; None on 404."""
        ...

    async def list_objects(
        self,
        path: str,
        headers: Mapping[str, str | Sequence[str]],
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        """LIST as the caller."""
        ...

    @property
    def has_own_credentials(self) -> bool:
        """Whether lookups can be made with the proxy's own credentials."""
        ...

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        """Who these headers act as."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Refusal(KlockProxyError):
    """The request is answered by the proxy with ``status`` instead of being forwarded."""

    def __init__(self, status: Status, log_message: str | None = None) -> None:
        self.status = status
        # What the proxy log says instead of the Status message, when that message may quote
        # the request body (a YAML error shows the offending line: possibly a secret).
        self.log_message = log_message
        super().__init__(status["message"])


def _body_refusal(code: int, message: str) -> Refusal:
    """A refusal whose detail (quoting the body) goes to the client, never to the log."""
    return Refusal(
        failure(code, message),
        log_message=f"the request body could not be used (HTTP {code}; detail sent to the client)",
    )


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


def api_prefix(info: RequestInfo) -> str:
    """``/api/v1`` or ``/apis/<group>/<version>``."""
    if info.group:
        return f"/apis/{quote(info.group, safe='')}/{quote(info.version, safe='')}"
    return f"/api/{quote(info.version, safe='')}"


def collection_path(info: RequestInfo) -> str:
    """The URL path of the collection the request addresses (the parent's, for subresources)."""
    prefix = api_prefix(info)
    resource = quote(info.resource, safe="")
    if info.namespace and not (info.group == "" and info.resource == "namespaces"):
        return f"{prefix}/namespaces/{quote(info.namespace, safe='')}/{resource}"
    return f"{prefix}/{resource}"


def object_path(info: RequestInfo) -> str:
    """The URL path of the (parent) object the request acts on."""
    return f"{collection_path(info)}/{quote(info.name, safe='')}"


def _connect_prefix_infos(method: str, raw_path: str) -> list[RequestInfo]:
    """Readings of the path as ``<object>/<connect subresource>`` followed by an opaque tail.

    ``classify`` refuses empty segments, ``%2F`` and the like anywhere, but after
    ``.../pods/NAME/proxy`` the rest is the proxied path (``proxy/``, ``proxy/a//b`` are
    routed by the API server), and ``exec/`` with a trailing slash still reaches exec. Each
    prefix ending in a connect subresource word is classified on its own.
    """
    path, sep, query = raw_path.partition("?")
    segments = path.split("/")
    out = []
    for i, segment in enumerate(segments):
        if unquote(segment) not in CONNECT_SUBRESOURCES:
            continue
        prefix = "/".join(segments[: i + 1]) + (sep + query)
        try:
            info = classify(method, prefix)
        except ClassificationError:
            continue
        if info.verb == "connect":
            out.append(info)
    return out


# The kubelet API behind nodes/NAME/proxy: /exec|run|attach/NS/POD/..., /portForward/NS/POD.
_KUBELET_POD_ACTIONS = {
    "exec": "exec",
    "run": "exec",
    "attach": "attach",
    "portForward": "portforward",
}


def _kubelet_target(info: RequestInfo, raw_path: str) -> RequestInfo | None:
    """``nodes/N/proxy/exec/NS/POD/...`` acts on pod NS/POD: judge it as that pod's CONNECT."""
    if info.group or info.resource != "nodes" or info.subresource != "proxy":
        return None
    # Decode, then split: the API server hands the kubelet the decoded path, so
    # ``exec%2Fdefault%2Fmy-pod`` is ``exec/default/my-pod`` there.
    segments = unquote(raw_path.partition("?")[0]).split("/")
    for i in range(2, len(segments)):
        if segments[i] == "proxy" and segments[i - 2] == "nodes":
            # Empty segments dropped: the kubelet's router cleans the path.
            tail = [part for part in segments[i + 1 :] if part]
            break
    else:
        return None
    if not tail or tail[0] not in _KUBELET_POD_ACTIONS:
        return None
    if len(tail) < 3:
        raise ClassificationError(f"kubelet {tail[0]} path without namespace and pod")
    namespace, pod = quote(tail[1], safe=""), quote(tail[2], safe="")
    # A pod name classify refuses raises: the kubelet would still act on some pod.
    return classify(
        "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}/{_KUBELET_POD_ACTIONS[tail[0]]}"
    )


def classify_request(method: str, raw_path: str) -> RequestInfo:
    """``classify``, plus the connect subresources whose tail ``classify`` refuses, and the
    kubelet's pod actions reached through ``nodes/NAME/proxy`` (a CONNECT on that pod).

    Raises ClassificationError when the path has no reading the proxy can judge.
    """
    try:
        info = classify(method, raw_path)
    except ClassificationError:
        readings = _connect_prefix_infos(method, raw_path)
        if not readings:
            raise
        info = readings[0]
    return _kubelet_target(info, raw_path) or info


def may_be_connect(raw_path: str) -> bool:
    """Whether any path segment names a connect subresource (then it is not a plain read)."""
    # Decode first, then split: the API server routes ``my-pod%2Fexec`` to exec.
    path = unquote(raw_path.partition("?")[0])
    return any(part in CONNECT_SUBRESOURCES for part in path.split("/"))


def _is_crd_delete(info: RequestInfo) -> bool:
    return (
        info.group == "apiextensions.k8s.io"
        and info.resource == "customresourcedefinitions"
        and info.verb in ("delete", "deletecollection")
        and not info.subresource
    )


def _has_delete_locks(engine: Engine) -> bool:
    # An invalid Lock refuses every operation in its namespace, DELETE included.
    return bool(engine.invalid) or any(Operation.DELETE in lk.operations for lk in engine.locks)


def _group_resource(info: RequestInfo) -> str:
    return ResourceRef(info.group, info.version, info.resource).group_resource


def forbidden(info: RequestInfo, name: str, message: str) -> Status:
    """403 Status shaped like the API server's admission denials.

    kubectl prints it as ``Error from server (Forbidden): pods "x" is forbidden: <message>``.
    """
    target = f'{_group_resource(info)} "{name}"' if name else _group_resource(info)
    details: StatusDetails = {"group": info.group, "kind": info.resource}
    if name:
        details["name"] = name
    return failure(403, f"{target} is forbidden: {message}", details=details)


def _labels(obj: Mapping[str, Any] | None) -> dict[str, str] | None:
    return None if obj is None else labels_of(dict(obj))


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


# (operation, name, old labels, new labels, kind) -> the AdmissionInput of this request.
_InputMaker = Callable[
    [Operation, str, Mapping[str, str] | None, Mapping[str, str] | None, str], AdmissionInput
]


@dataclass
class _Plan:
    """What a covered mutation is judged on, and the object version it was judged against."""

    inputs: list[AdmissionInput]
    name: str
    guard: tuple[str, str] | None = None  # (resourceVersion, uid) of the checked object
    absent: bool = False  # the object did not exist when checked
    # Inputs from index ``own`` on are about consequences (an adopted owner, dependents the
    # garbage collector deletes); ``note`` explains them when one of those is denied.
    own: int | None = None
    note: str = ""
    # Inputs about objects the caller may not see: a denial names the lock, not the object.
    hidden: frozenset[int] = frozenset()


class KlockProxy:
    """The mitmproxy addon (options ``klock_*``; see the module docstring)."""

    def __init__(
        self,
        lock_set: LockSet | None = None,
        upstream: Lookups | None = None,
        identity: IdentityResolver | None = None,
        *,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._injected_lock_set = lock_set is not None
        self._injected_upstream = upstream is not None
        self.lock_set: LockSet | None = lock_set
        self.upstream: Lookups | None = upstream
        self.identity: IdentityResolver | None = identity
        if identity is None and upstream is not None:
            self.identity = IdentityResolver(upstream)
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
        try:
            settings = self._parse_options()
        except ConfigError as e:
            raise exceptions.OptionsError(str(e)) from e
        old = self.settings
        self.settings = settings
        # The only way to change mitmproxy's idle timeout: it is read by every new connection.
        mitmproxy.proxy.server.TCP_TIMEOUT = settings.idle_timeout
        self._upstream_token = (
            TokenFile(settings.upstream_token_file) if settings.upstream_token_file else None
        )
        if not self._injected_upstream and (old is None or old.upstream != settings.upstream):
            if self.upstream is not None:
                self._spawn(self.upstream.close())
            self.upstream = Upstream(settings.upstream) if settings.upstream else None
            self.identity = IdentityResolver(self.upstream) if self.upstream else None
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

    def _parse_options(self) -> Settings:
        opts = ctx.options
        locks = tuple(s.strip() for s in opts.klock_locks if s.strip())
        if not locks and not self._injected_lock_set:
            # An empty value (say, an unset shell variable) would enforce nothing, silently.
            # (An injected lock set is its owner's choice.)
            raise ConfigError("klock_locks is empty: name 'cluster' and/or lock files")
        for spec in locks:
            if spec != CLUSTER_SPEC:
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

    async def done(self) -> None:
        """Stop the lock sources and close upstream connections."""
        self._running = False
        if self._started_lock_set is not None and not self._injected_lock_set:
            await self._started_lock_set.stop()
        self._started_lock_set = None
        if self.upstream is not None and not self._injected_upstream:
            await self.upstream.close()
        for task in list(self._tasks):
            task.cancel()

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
    # Per-request hooks

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Authenticate (local mode), classify, pick the fast path or mark for judging."""
        req = flow.request
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
        if mark == _ANSWERED:
            return
        flow.metadata[_MARK] = mark
        if (err := await self._probe(flow)) is not None:
            self._answer(flow, err)
            return
        if mark == _PASS and self._streamable(req):
            req.stream = True
        elif mark == _JUDGE:
            # Another addon (StreamBodies) may have asked for streaming: a covered write must
            # be complete before it is judged.
            req.stream = False

    def _triage(self, flow: http.HTTPFlow) -> str:
        """PASS (forward untouched), JUDGE (needs the body and a decision) or ANSWERED."""
        req = flow.request
        method = req.method.upper()
        try:
            info = classify_request(method, req.path)
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
        op = info.operation
        assert op is not None
        ns = info.namespace
        covered = engine.covers(ns, op) or (_is_crd_delete(info) and _has_delete_locks(engine))
        if not covered and info.verb == "patch" and not info.subresource:
            # Server-side apply creates the object when it does not exist.
            ctype = media_type(req.headers.get("content-type", ""))
            covered = ctype == APPLY_PATCH and engine.covers(ns, Operation.CREATE)
        if not covered and info.verb == "update" and not info.subresource:
            # PUT creates the object for resources that allow create-on-update (leases...).
            covered = engine.covers(ns, Operation.CREATE)
        if not covered and info.verb in ("update", "patch") and not info.subresource:
            # A new owner reference lets the garbage collector delete the object later:
            # judged as a DELETE too (see _owner_inputs).
            covered = engine.covers(ns, Operation.DELETE)
        return _JUDGE if covered else _PASS

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
        if resp.status_code != 101:
            resp.stream = True

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

    def _answer(self, flow: http.HTTPFlow, status: Status, log_message: str | None = None) -> None:
        flow.metadata[_MARK] = _ANSWERED
        flow.response = http.Response.make(
            status["code"], to_bytes(status), {"Content-Type": "application/json"}
        )
        if status["code"] >= 500 or status["code"] == 401:
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
    # Judging covered mutations

    async def _judge(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        try:
            info = classify_request(req.method.upper(), req.path)
            engine = self._engine()
            if engine is None:
                raise Refusal(self._not_ready())
            if self.upstream is None or self.identity is None:
                raise Refusal(failure(503, "klockproxy: no API server configured for lookups"))
            await self._check(flow, info, engine)
        except Refusal as r:
            self._answer(flow, r.status, r.log_message)
        except Exception as e:
            # Fail closed on a bug rather than forward a write nobody judged. The exception's
            # message may quote request data: log its type and where it happened only.
            where = "".join(traceback.format_tb(e.__traceback__))
            logger.error(
                "klockproxy: internal error while checking locks: %s\n%s", type(e).__name__, where
            )
            self._answer(flow, failure(500, "klockproxy: internal error while checking locks"))

    async def _check(self, flow: http.HTTPFlow, info: RequestInfo, engine: Engine) -> None:
        headers = auth_headers(flow.request.headers)
        if (
            info.group == ""
            and info.resource == "namespaces"
            and info.verb == "delete"
            and not info.subresource
        ):
            await self._check_namespace_delete(info, engine, headers)
        if _is_crd_delete(info):
            await self._check_crd_delete(info, engine, headers)
        plan = await self._plan(flow.request, info, engine, headers)
        if plan is None:
            return
        decisions = await self._decide(engine, plan.inputs, headers)
        denied = [d for d in decisions if not d.allowed]
        if denied:
            raise Refusal(self._denial(info, plan, decisions))
        if plan.guard is not None:
            add_precondition(flow.request, info, *plan.guard)
        elif plan.absent:
            add_precondition(flow.request, info, "", ABSENT_UID, absent=True)

    def _denial(self, info: RequestInfo, plan: _Plan, decisions: list[Decision]) -> Status:
        if info.verb != "deletecollection":
            index, first = next((i, d) for i, d in enumerate(decisions) if not d.allowed)
            note = ""
            if plan.note and plan.own is not None and index >= plan.own:
                note = f"; {plan.note}"
            if index in plan.hidden:
                unseen = plan.inputs[index].resource.group_resource
                locks = ", ".join(sorted({d.lock.key for d in first.denials}))
                message = (
                    f"{DENIAL_PREFIX}one of the {unseen} that the garbage collector would "
                    f"delete after it is locked (Lock {locks})"
                )
                return forbidden(info, plan.name, message + note)
            return forbidden(info, plan.name, first.message + note)
        texts: list[str] = []
        names: list[str] = []
        for inp, decision in zip(plan.inputs, decisions, strict=True):
            if not decision.allowed:
                names.append(inp.name)
                texts.extend(d.text for d in decision.denials)
        message = DENIAL_PREFIX + ", and a lock: ".join(texts[:MAX_NAMED_OBJECTS])
        listed = ", ".join(names[:MAX_NAMED_OBJECTS])
        if len(names) > MAX_NAMED_OBJECTS:
            listed += f" and {len(names) - MAX_NAMED_OBJECTS} more"
        message += f"; deletecollection would delete locked objects: {listed}"
        return forbidden(info, "", message)

    async def _decide(
        self,
        engine: Engine,
        inputs: list[AdmissionInput],
        headers: Mapping[str, Sequence[str]],
    ) -> list[Decision]:
        decisions = [engine.decide(inp) for inp in inputs]
        caller_matters = any(
            d.exempted or any(den.lock.has_exclusive for den in d.denials) for d in decisions
        )
        if not caller_matters:
            return decisions
        user = await self._resolve(headers)
        return [engine.decide(replace(inp, user=user)) for inp in inputs]

    async def _resolve(self, headers: Mapping[str, Sequence[str]]) -> UserInfo:
        assert self.identity is not None
        try:
            return await self.identity.resolve(headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure("who is calling (SelfSubjectReview)", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e

    async def _check_crd_delete(
        self, info: RequestInfo, engine: Engine, headers: Mapping[str, Sequence[str]]
    ) -> None:
        """Deleting a CustomResourceDefinition deletes every object of that kind, behind the
        proxy's back: refuse when a lock would refuse deleting one of them."""
        if info.verb == "deletecollection":
            raise Refusal(
                failure(
                    403,
                    "klockproxy: deleting CustomResourceDefinitions by collection is refused "
                    "while DELETE locks exist; delete them one by one",
                )
            )
        crd = await self._get(info, headers)
        if crd is None:
            return
        raw_spec = crd.get("spec")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        raw_names = spec.get("names")
        group, plural = (
            spec.get("group"),
            raw_names.get("plural") if isinstance(raw_names, dict) else None,
        )
        versions = [
            str(v["name"])
            for v in spec.get("versions") or []
            if isinstance(v, dict) and v.get("served") and isinstance(v.get("name"), str)
        ]
        if group == GROUP and plural == "locks":
            return  # Lock objects are never locked: deleting them all unlocks, by design.
        if not (isinstance(group, str) and isinstance(plural, str) and versions):
            # Its objects cannot be listed (say, every version unserved first): fail closed.
            raise Refusal(
                failure(
                    403,
                    f"klockproxy: DELETE locks exist and the objects that deleting {info.name} "
                    "would delete cannot be listed (no served version); serve a version first",
                )
            )
        assert self.upstream is not None
        version = versions[0]
        path = "/apis/" + "/".join(quote(part, safe="") for part in (group, version, plural))
        try:
            items = await self.upstream.list_objects(path, headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"what deleting {info.name} deletes", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        ref = ResourceRef(group, version, plural)
        inputs = [
            AdmissionInput(
                operation=Operation.DELETE,
                namespace=str(_meta(item).get("namespace") or ""),
                resource=ref,
                name=str(_meta(item).get("name") or ""),
                user=_NOBODY,
                old_labels=labels_of(item),
            )
            for item in items
        ]
        decisions = await self._decide(engine, inputs, headers)
        locked = [(inp, d) for inp, d in zip(inputs, decisions, strict=True) if not d.allowed]
        if not locked:
            return
        texts = [den.text for _, d in locked[:MAX_NAMED_OBJECTS] for den in d.denials]
        listed = ", ".join(f"{inp.namespace}/{inp.name}" for inp, _ in locked[:MAX_NAMED_OBJECTS])
        if len(locked) > MAX_NAMED_OBJECTS:
            listed += f" and {len(locked) - MAX_NAMED_OBJECTS} more"
        message = (
            DENIAL_PREFIX
            + ", and a lock: ".join(texts)
            + f"; deleting the CustomResourceDefinition deletes locked objects: {listed}"
        )
        raise Refusal(forbidden(info, info.name, message))

    async def _check_namespace_delete(
        self, info: RequestInfo, engine: Engine, headers: Mapping[str, Sequence[str]]
    ) -> None:
        """Deleting a namespace deletes every object in it, behind the proxy's back.

        The namespace controller's deletions never pass the proxy, so any DELETE lock in the
        namespace that applies to the caller refuses the namespace's deletion (even when it
        matches no object right now: listing every resource type would be the alternative).
        """
        locks = [
            lk
            for lk in engine.locks
            if lk.namespace == info.name and Operation.DELETE in lk.operations
        ]
        if not locks:
            return
        user = await self._resolve(headers) if any(lk.has_exclusive for lk in locks) else _NOBODY
        applying = [lk for lk in locks if not is_exempt(lk, user)]
        if not applying:
            return
        texts = [
            f"{lk.matcher_text()} (Lock {lk.key} forbids DELETE in namespace {info.name}, and "
            f"deleting the namespace deletes every object in it; {who_may(lk)})"
            for lk in applying
        ]
        raise Refusal(forbidden(info, info.name, DENIAL_PREFIX + ", and a lock: ".join(texts)))

    def _lookup_failure(self, what: str, e: UpstreamStatusError) -> Status:
        if e.code in (401, 403):
            return failure(
                e.code,
                f"klockproxy: a lock covers this request and the API server refused to tell "
                f"{what}: {e.message}",
            )
        return failure(503, f"klockproxy: cannot check locks: reading {what} failed: {e}")

    async def _get(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> dict[str, Any] | None:
        assert self.upstream is not None
        path = object_path(info)
        try:
            return await self.upstream.get_object(path, headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"the current object {path}", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e

    async def _plan(
        self,
        req: http.Request,
        info: RequestInfo,
        engine: Engine,
        headers: Mapping[str, Sequence[str]],
    ) -> _Plan | None:
        """The admission inputs of a covered mutation; None when the API server will 404."""
        op = info.operation
        assert op is not None

        def inp(
            operation: Operation,
            name: str,
            old: Mapping[str, str] | None,
            new: Mapping[str, str] | None,
            kind: str = "",
        ) -> AdmissionInput:
            return AdmissionInput(
                operation=operation,
                namespace=info.namespace,
                resource=info.ref,
                name=name,
                user=_NOBODY,
                old_labels=old,
                new_labels=new,
                dry_run=info.dry_run,
                kind=kind,
            )

        verb = info.verb
        if verb == "deletecollection":
            return await self._plan_deletecollection(info, engine, headers, inp)
        if verb == "create" and not info.subresource:
            obj = _decode(req)
            meta = _meta(obj)
            name = str(meta.get("name") or meta.get("generateName") or "")
            return _Plan([inp(op, name, None, labels_of(obj), _kind(obj))], name)
        if verb == "patch" and info.subresource in _LABEL_SUBRESOURCES:
            return await self._plan_patch(req, info, engine, headers, inp)

        current = await self._get(info, headers)
        if current is None:
            # The API server answers 404 itself, unless an object of that name appears before
            # the write lands: guard deletes (and evictions) against that. A PUT of a missing
            # object may create it: judged as a creation.
            if verb == "delete" or info.subresource == "eviction":
                return _Plan([], info.name, absent=True)
            if (
                verb == "update"
                and not info.subresource
                and engine.covers(info.namespace, Operation.CREATE)
            ):
                obj = _decode(req)
                return _Plan(
                    [inp(Operation.CREATE, info.name, None, labels_of(obj), _kind(obj))],
                    info.name,
                )
            return None
        kind = _kind(current)
        old = labels_of(current)
        guard = _version(current)
        if verb == "update" and info.subresource in _LABEL_SUBRESOURCES:
            obj = _decode(req)
            new = labels_of(obj)
            inputs = [inp(op, info.name, old, new, kind)]
            owners = _owner_inputs(current, obj, inp, info.name, kind)
            return _Plan(inputs + owners, info.name, guard, own=len(inputs), note=_OWNER_NOTE)
        if op is Operation.UPDATE:
            # scale, ephemeralcontainers (update or patch): the parent's labels decide; these
            # subresources cannot change labels (a Scale object has none).
            return _Plan([inp(op, info.name, old, old, kind)], info.name, guard)
        if op is Operation.CREATE:
            # A create on another subresource (serviceaccounts/token, pods/binding).
            return _Plan([inp(op, info.name, None, old, kind)], info.name)
        if op is Operation.CONNECT:
            return _Plan([inp(op, info.name, old, None, kind)], info.name)
        # DELETE, and pods/eviction (a DELETE of the pod).
        inputs = [inp(op, info.name, old, None, kind)]
        # A namespace is judged as a whole (_check_namespace_delete).
        whole = info.group == "" and info.resource == "namespaces"
        hidden: set[int] = set()
        if verb == "delete" and not whole and not _orphans(req, info):
            for dependent, unseen in await self._dependent_inputs(info, current, headers):
                if unseen:
                    hidden.add(len(inputs))
                inputs.append(dependent)
        return _Plan(
            inputs, info.name, guard, own=1, note=_DEPENDENTS_NOTE, hidden=frozenset(hidden)
        )

    async def _dependent_inputs(
        self, info: RequestInfo, current: Mapping[str, Any], headers: Mapping[str, Sequence[str]]
    ) -> list[tuple[AdmissionInput, bool]]:
        """DELETE judgements for what the garbage collector deletes after this object, each
        with whether the caller may not see it (listed with the proxy's credentials only).

        Dependents are found (transitively, by owner uid) among the kinds controllers and
        operators commonly create (``_DEPENDENT_KINDS``) in the same namespace, listed as
        metadata only. As the caller first; when RBAC does not let the caller list a kind, with
        the proxy's own credentials if it has some, else the DELETE is refused (fail closed).
        A kind the API server does not serve is skipped.
        """
        root = str(_meta(current).get("uid") or "")
        if not root or not info.namespace:
            return []
        assert self.upstream is not None
        listed: list[tuple[ResourceRef, dict[str, Any], bool]] = []
        for ref in _DEPENDENT_KINDS:
            prefix = f"/apis/{ref.group}/{ref.version}" if ref.group else f"/api/{ref.version}"
            path = f"{prefix}/namespaces/{quote(info.namespace, safe='')}/{ref.resource}"
            items, hidden = await self._list_dependents(info, ref, path, headers)
            listed.extend((ref, item, hidden) for item in items)
        owners = {root}
        dependents: list[tuple[ResourceRef, dict[str, Any], bool]] = []
        grew = True
        while grew:
            grew = False
            for ref, item, hidden in listed:
                uid = str(_meta(item).get("uid") or "")
                if uid and uid not in owners and _owner_uids(item) & owners:
                    owners.add(uid)
                    dependents.append((ref, item, hidden))
                    grew = True
        return [
            (
                AdmissionInput(
                    operation=Operation.DELETE,
                    namespace=info.namespace,
                    resource=ref,
                    name=str(_meta(item).get("name") or ""),
                    user=_NOBODY,
                    old_labels=labels_of(item),
                    dry_run=info.dry_run,
                    kind=_kind(item),
                ),
                hidden,
            )
            for ref, item, hidden in dependents
        ]

    async def _list_dependents(
        self,
        info: RequestInfo,
        ref: ResourceRef,
        path: str,
        headers: Mapping[str, Sequence[str]],
    ) -> tuple[list[dict[str, Any]], bool]:
        """The items, and whether only the proxy's own credentials could list them (then the
        caller must not learn their names)."""
        assert self.upstream is not None
        attempts: list[Mapping[str, Sequence[str]]] = [headers]
        if self.upstream.has_own_credentials:
            attempts.append({})
        for attempt in attempts:
            try:
                items = await self.upstream.list_objects(path, attempt, metadata_only=True)
                return items, attempt is not headers
            except UpstreamStatusError as e:
                if e.code == 404:
                    return [], False
                if e.code not in (401, 403) or attempt is attempts[-1]:
                    raise Refusal(
                        failure(
                            403 if e.code in (401, 403) else 503,
                            f"klockproxy: DELETE locks exist in namespace {info.namespace} and "
                            f"the proxy cannot tell which {ref.resource} the garbage collector "
                            f"would delete after {info.name} ({e.message}); delete it with "
                            "propagationPolicy=Orphan (kubectl delete --cascade=orphan)",
                        )
                    ) from e
            except UpstreamError as e:
                raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        return [], False

    async def _plan_patch(
        self,
        req: http.Request,
        info: RequestInfo,
        engine: Engine,
        headers: Mapping[str, Sequence[str]],
        inp: _InputMaker,
    ) -> _Plan | None:
        ctype = req.headers.get("content-type", "")
        is_apply = media_type(ctype) == APPLY_PATCH
        body = _body(req)
        current = await self._get(info, headers)
        if current is None:
            if info.subresource:
                return None
            if not is_apply:
                # The API server answers 404, or 409 thanks to the guard if an object of that
                # name was created meanwhile.
                return _Plan([], info.name, absent=True)
            applied = _apply(
                {},
                body,
                ctype,
                (info.group, ""),  # the kind comes from the configuration
            )
            name = str(_meta(applied).get("name") or info.name)
            return _Plan(
                [inp(Operation.CREATE, name, None, labels_of(applied), _kind(applied))],
                name,
            )
        kind = _kind(current)
        old = labels_of(current)
        patched = _apply(current, body, ctype, kind_key_of(current))
        inputs = [inp(Operation.UPDATE, info.name, old, labels_of(patched), kind)]
        if is_apply:
            # The merge keeps labels the applier owned and dropped; the API server removes
            # them. Judge also the result with those removed (from managedFields), and, in
            # case managedFields is missing or incomplete, the configuration's labels alone:
            # a removal must not slip past a "^value" matcher.
            applied = _apply({}, body, ctype, kind_key_of(current))
            manager = (info.query.get("fieldManager") or ("",))[0]
            ssa = ssa_result_labels(current, applied, manager, info.subresource)
            inputs.append(inp(Operation.UPDATE, info.name, old, ssa, kind))
            inputs.append(inp(Operation.UPDATE, info.name, old, labels_of(applied), kind))
        owners = _owner_inputs(current, patched, inp, info.name, kind)
        return _Plan(
            inputs + owners, info.name, _version(current), own=len(inputs), note=_OWNER_NOTE
        )

    async def _plan_deletecollection(
        self,
        info: RequestInfo,
        engine: Engine,
        headers: Mapping[str, Sequence[str]],
        inp: _InputMaker,
    ) -> _Plan:
        assert self.upstream is not None
        if any(bad.namespace == info.namespace for bad in engine.invalid):
            # An invalid Lock refuses every mutation of its namespace; an empty list would
            # leave nothing to judge while objects created meanwhile would still be deleted.
            decision = engine.decide(inp(Operation.DELETE, "", {}, None, ""))
            if not decision.allowed:
                raise Refusal(forbidden(info, "", decision.message))
        for param in ("resourceVersion", "resourceVersionMatch", "continue"):
            if info.query.get(param):
                # The API server would delete what it lists at that (possibly old) version -
                # a continue token carries one too - while the proxy judges what exists now.
                raise Refusal(
                    failure(
                        400,
                        f"klockproxy: a lock covers this namespace; deletecollection with "
                        f"{param} is not supported through klockproxy",
                    )
                )
        path = collection_path(info)
        label_selector = (info.query.get("labelSelector") or ("",))[0]
        field_selector = (info.query.get("fieldSelector") or ("",))[0]
        try:
            items = await self.upstream.list_objects(
                path, headers, label_selector or None, field_selector or None
            )
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"what {path} would delete", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        inputs = []
        for item in items:
            name = str(_meta(item).get("name", ""))
            inputs.append(inp(Operation.DELETE, name, labels_of(item), None, ""))
        return _Plan(inputs, "")


# ----------------------------------------------------------------------------------------
# Bodies


def _body(req: http.Request) -> bytes:
    try:
        body = req.get_content(strict=True)
    except ValueError as e:
        raise _body_refusal(
            400, f"klockproxy: cannot decode the request body's Content-Encoding: {e}"
        ) from e
    return body or b""


def _decode(req: http.Request) -> dict[str, Any]:
    ctype = req.headers.get("content-type", "")
    try:
        return decode_body(_body(req), ctype)
    except DecodeError as e:
        raise _body_refusal(
            400, f"klockproxy: a lock covers this request and its body cannot be read: {e}"
        ) from e


def _apply(
    obj: Mapping[str, Any], body: bytes, ctype: str, kind_key: tuple[str, str]
) -> dict[str, Any]:
    try:
        return apply_patch(obj, body, ctype, kind_key=kind_key)
    except UnsupportedPatchError as e:
        raise _body_refusal(415, f"klockproxy: {e}") from e
    except PatchError as e:
        raise _body_refusal(
            400, f"klockproxy: a lock covers this request and its patch fails: {e}"
        ) from e


def _owned_labels(entry: Mapping[str, Any]) -> set[str]:
    """Label keys a managedFields entry owns (``f:metadata`` / ``f:labels`` / ``f:<key>``)."""
    fields = entry.get("fieldsV1")
    meta = fields.get("f:metadata") if isinstance(fields, dict) else None
    labels = meta.get("f:labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict):
        return set()
    return {key[2:] for key in labels if isinstance(key, str) and key.startswith("f:")}


def ssa_result_labels(
    current: Mapping[str, Any], applied: Mapping[str, Any], manager: str, subresource: str = ""
) -> dict[str, str]:
    """The labels server-side apply leaves: current plus the configuration's, minus those
    this field manager applied before, dropped now, and nobody else owns."""
    config = labels_of(dict(applied))
    result = labels_of(dict(current))
    result.update(config)
    entries = _meta(current).get("managedFields")
    if not isinstance(entries, list):
        return result
    mine: set[str] = set()
    others: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        owned = _owned_labels(entry)
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and (entry.get("subresource") or "") == subresource
        ):
            mine |= owned
        else:
            others |= owned
    for key in mine - others - config.keys():
        result.pop(key, None)
    return result


# What controllers and operators commonly create as dependents (custom resources aside).
_DEPENDENT_KINDS = (
    ResourceRef("", "v1", "pods"),
    ResourceRef("apps", "v1", "replicasets"),
    ResourceRef("batch", "v1", "jobs"),
    ResourceRef("", "v1", "persistentvolumeclaims"),
    ResourceRef("", "v1", "configmaps"),
    ResourceRef("", "v1", "secrets"),
    ResourceRef("", "v1", "services"),
    ResourceRef("apps", "v1", "deployments"),
    ResourceRef("apps", "v1", "statefulsets"),
    ResourceRef("apps", "v1", "daemonsets"),
)
_DEPENDENTS_NOTE = (
    "the garbage collector deletes the dependents of a deleted object; delete it with "
    "propagationPolicy=Orphan (kubectl delete --cascade=orphan) to keep them"
)


def _orphans(req: http.Request, info: RequestInfo) -> bool:
    """Whether this DELETE orphans the dependents (else the garbage collector deletes them).

    The body's DeleteOptions win over the query, as on the API server; anything unreadable
    counts as a cascade.
    """
    body = _body(req)
    if not body.strip():
        policy = (info.query.get("propagationPolicy") or ("",))[0]
        orphan = (info.query.get("orphanDependents") or ("",))[0]
        return policy == "Orphan" or orphan == "true"
    ctype = req.headers.get("content-type", "")
    try:
        if media_type(ctype) == PROTOBUF_CONTENT_TYPE:
            raw = unwrap_unknown(body).raw
            orphan_flag = any(n == 3 and v == 1 for n, _, v in decode_fields(raw))
            return _last_string(raw, 4) == "Orphan" or orphan_flag
        doc = _load_document(body, ctype, "DeleteOptions body")
    except (Refusal, DecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    return doc.get("propagationPolicy") == "Orphan" or doc.get("orphanDependents") is True


_OWNER_NOTE = (
    "the write lets a controller delete the object later (a new or changed owner reference: "
    "the garbage collector deletes an object whose owner is gone; a Job's "
    "ttlSecondsAfterFinished: the TTL controller deletes the finished Job)"
)


def _owner_refs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    refs = _meta(obj).get("ownerReferences")
    return [ref for ref in refs if isinstance(ref, dict)] if isinstance(refs, list) else []


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    return {str(ref.get("uid", "")) for ref in _owner_refs(obj)}


def _owner_keys(obj: Mapping[str, Any]) -> set[tuple[str, str, str, str]]:
    """(group, kind, name, uid) of each owner: the garbage collector resolves an owner by
    group/kind/name and compares the uid, so changing any of them can orphan the object."""
    keys = set()
    for ref in _owner_refs(obj):
        api_version = str(ref.get("apiVersion", ""))
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        keys.add(
            (group, str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
        )
    return keys


def _owner_inputs(
    current: Mapping[str, Any],
    new: Mapping[str, Any],
    inp: _InputMaker,
    name: str,
    kind: str,
) -> list[AdmissionInput]:
    """DELETE judgements for a write that lets a controller delete the object later.

    The garbage collector deletes an object once its owner is gone, and the TTL controller a
    finished Job once ``spec.ttlSecondsAfterFinished`` passed, behind the proxy's back: giving
    a DELETE-locked object a new or changed owner reference, or a Job a new TTL, is judged
    like deleting it, on its old and on its new labels. Removing owners only keeps objects
    alive.
    """
    new_owner = bool(_owner_keys(new) - _owner_keys(current))
    if not new_owner and not _ttl_changed(current, new):
        return []
    old_labels, new_labels = labels_of(dict(current)), labels_of(dict(new))
    out = [inp(Operation.DELETE, name, old_labels, None, kind)]
    if new_labels != old_labels:
        out.append(inp(Operation.DELETE, name, new_labels, None, kind))
    return out


def _ttl_changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A Job whose ``spec.ttlSecondsAfterFinished`` is set or changed by this write."""
    if _kind(current) != "Job" or not str(current.get("apiVersion", "")).startswith("batch/"):
        return False

    def ttl(obj: Mapping[str, Any]) -> Any:
        spec = obj.get("spec")
        return spec.get("ttlSecondsAfterFinished") if isinstance(spec, dict) else None

    after = ttl(new)
    return after is not None and after != ttl(current)


def _kind(obj: Mapping[str, Any]) -> str:
    kind = obj.get("kind")
    return kind if isinstance(kind, str) else ""


def _version(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = _meta(obj)
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        return None
    uid = meta.get("uid")
    return rv, uid if isinstance(uid, str) else ""


def _load_document(body: bytes, ctype: str, what: str) -> Any:
    """A JSON or YAML request body as Python values; Refusal for anything else."""
    mtype = media_type(ctype)
    try:
        if mtype in _JSON_TYPES or mtype in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH):
            return json.loads(body)
        if mtype in _YAML_TYPES or mtype == APPLY_PATCH:
            docs = load_yaml_documents(body)
            if len(docs) != 1:
                raise ValueError(f"expected one YAML document, got {len(docs)}")
            return docs[0]
    except (ValueError, DecodeError) as e:
        raise _body_refusal(400, f"klockproxy: cannot read the {what}: {e}") from e
    raise Refusal(
        failure(
            415,
            f"klockproxy: a lock covers this object, so the write must be made conditional on "
            f"the checked resourceVersion, which the proxy cannot add to a {mtype or 'bodyless'}"
            f" {what}; send JSON (kubectl does by default)",
        )
    )


def _merged_message(buf: bytes, number: int) -> bytes:
    """Every occurrence of embedded message ``number``, concatenated: protobuf merges them."""
    out = bytearray()
    for field_no, wire, value in decode_fields(buf):
        if field_no == number and wire == LEN and isinstance(value, bytes):
            out += value
    return bytes(out)


def _last_string(buf: bytes, number: int) -> str:
    """The value of string field ``number`` (the last occurrence wins), "" when absent."""
    found = b""
    for field_no, wire, value in decode_fields(buf):
        if field_no == number and wire == LEN and isinstance(value, bytes):
            found = value
    return found.decode("utf-8", "replace")


def _protobuf_guard(
    body: bytes, info: RequestInfo, rv: str, uid: str, *, absent: bool = False
) -> bytes:
    """Add the precondition to a protobuf body by appending fields (protobuf merges them).

    Field numbers from k8s.io/api: every object's ObjectMeta is field 1, its resourceVersion
    field 6; DeleteOptions.preconditions is field 2 (uid 1, resourceVersion 2);
    Eviction.deleteOptions is field 2. Appending leaves every other field byte for byte as
    the client sent it; values the client set are kept.
    """
    try:
        envelope = unwrap_unknown(body)
    except DecodeError as e:
        raise _body_refusal(400, f"klockproxy: cannot read the protobuf body: {e}") from e
    if envelope.content_encoding:
        raise Refusal(
            failure(
                415,
                f"klockproxy: cannot add the resourceVersion precondition to a protobuf body "
                f"with content encoding {envelope.content_encoding!r}",
            )
        )
    raw = envelope.raw
    verb = info.verb
    try:
        if verb == "update":
            client_rv = _last_string(_merged_message(raw, 1), 6)
            _check_client_value(info, client_rv, rv)
            if client_rv:
                return body
            raw += encode_len_field(1, encode_string_field(6, rv))
        else:
            options = _merged_message(raw, 2) if verb == "create" else raw
            pre = _merged_message(options, 2)
            add = b""
            client_rv, client_uid = _last_string(pre, 2), _last_string(pre, 1)
            if rv:
                _check_client_value(info, client_rv, rv)
                if not client_rv:
                    add += encode_string_field(2, rv)
            if uid and not client_uid:
                add += encode_string_field(1, uid)
            elif uid and not absent:
                _check_client_value(info, client_uid, uid)
            if not add:
                return body
            added = encode_len_field(2, add)
            raw += encode_len_field(2, added) if verb == "create" else added
    except DecodeError as e:
        raise _body_refusal(400, f"klockproxy: cannot read the protobuf body: {e}") from e
    return encode_unknown(
        envelope.api_version,
        envelope.kind,
        raw,
        content_type=envelope.content_type,
    )


def conflict(info: RequestInfo) -> Status:
    """409 as the API server words an optimistic-concurrency failure."""
    details: StatusDetails = {"group": info.group, "kind": info.resource}
    if info.name:
        details["name"] = info.name
    return failure(
        409,
        f'Operation cannot be fulfilled on {_group_resource(info)} "{info.name}": the object '
        "has been modified; please apply your changes to the latest version and try again",
        details=details,
    )


def _check_client_value(info: RequestInfo, client: Any, checked: str) -> None:
    """A precondition value the client set must be the one the proxy checked."""
    if client not in (None, "") and client != checked:
        raise Refusal(conflict(info))


def _set_json(req: http.Request, value: Any, ctype: str) -> None:
    req.content = json.dumps(value, separators=(",", ":")).encode()
    req.headers["content-type"] = ctype


def add_precondition(
    req: http.Request, info: RequestInfo, rv: str, uid: str, *, absent: bool = False
) -> None:
    """Make the write conditional on the checked object version (409 if it changed).

    A value the client already set is kept when it equals the checked one; when it differs
    the proxy answers 409 itself: the object may have moved to exactly the client's version
    since it was judged, which is the race this guard exists for.

    ``absent``: the object did not exist when checked (the API server will answer 404). A uid
    no object can have (``ABSENT_UID``) then makes the write fail with 409 instead if a
    (possibly locked) object of that name is created before the write lands; a uid the client
    set already does the same and is kept.
    """
    verb = info.verb
    body = _body(req)
    ctype = req.headers.get("content-type", "")
    mtype = media_type(ctype)
    if mtype == PROTOBUF_CONTENT_TYPE and verb in ("delete", "create", "update"):
        req.content = _protobuf_guard(body, info, rv, uid, absent=absent)
        return
    if verb == "delete" or (verb == "create" and info.subresource == "eviction"):
        what = "Eviction body" if verb == "create" else "DeleteOptions body"
        if body.strip():
            doc = _load_document(body, ctype, what)
        elif verb == "create":
            doc = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": info.name, "namespace": info.namespace},
            }
        else:
            doc = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if not isinstance(doc, dict):
            raise Refusal(failure(400, f"klockproxy: the {what} is not an object"))
        target = doc
        if verb == "create":
            opts = doc.get("deleteOptions")
            if opts is None:
                opts = doc["deleteOptions"] = {}
            if not isinstance(opts, dict):
                raise Refusal(failure(400, "klockproxy: Eviction.deleteOptions is not an object"))
            target = opts
        pre = target.get("preconditions")
        if pre is None:
            pre = target["preconditions"] = {}
        if not isinstance(pre, dict):
            raise Refusal(failure(400, "klockproxy: DeleteOptions.preconditions is not an object"))
        if rv:
            _check_client_value(info, pre.get("resourceVersion"), rv)
            pre["resourceVersion"] = rv
        if uid and not pre.get("uid"):
            pre["uid"] = uid
        elif uid and not absent:
            _check_client_value(info, pre.get("uid"), uid)
        _set_json(req, doc, "application/json")
        return
    if verb == "patch" and mtype == JSON_PATCH:
        ops = _load_document(body, ctype, "JSON patch")
        if not isinstance(ops, list):
            raise Refusal(failure(400, "klockproxy: a JSON patch must be a list of operations"))
        if absent:
            test = {"op": "test", "path": "/metadata/uid", "value": uid}
        else:
            test = {"op": "test", "path": "/metadata/resourceVersion", "value": rv}
        _set_json(req, [test, *ops], ctype)
        return
    if verb in ("update", "patch"):
        what = "request body" if verb == "update" else "patch"
        doc = _load_document(body, ctype, what)
        if not isinstance(doc, dict):
            raise Refusal(failure(400, f"klockproxy: the {what} is not an object"))
        meta = doc.get("metadata")
        if meta is None:
            meta = doc["metadata"] = {}
        if not isinstance(meta, dict):
            raise Refusal(failure(400, f"klockproxy: metadata in the {what} is not an object"))
        if absent:
            if not meta.get("uid"):
                meta["uid"] = uid
        else:
            _check_client_value(info, meta.get("resourceVersion"), rv)
            meta["resourceVersion"] = rv
        # JSON is valid YAML, so apply patches keep their content type.
        out_type = ctype if mtype not in _YAML_TYPES else "application/json"
        _set_json(req, doc, out_type or "application/json")
