"""The sandbox API server: aiohttp over HTTPS, Kubernetes REST semantics over the store.

Every request is authenticated (sandbox.auth), impersonation is resolved, the request is
authorized (sandbox.rbac), then dispatched: discovery, OpenAPI, or a resource verb.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import json
import logging
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import yaml
from aiohttp import web

from klockproxy import __version__
from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.core import protobuf
from klockproxy.core.errors import DecodeError, PatchError
from klockproxy.core.patches import UnsupportedPatchError, strategic_merge_patch
from klockproxy.core.status import StatusDetails, failure, success, to_bytes
from klockproxy.core.types import UserInfo
from klockproxy.loop_thread import LoopThread
from klockproxy.sandbox import (
    admission,
    bodies,
    discovery,
    escalation,
    objects,
    openapi,
    reviews,
    schema,
    tables,
)
from klockproxy.sandbox import auth as sandbox_auth
from klockproxy.sandbox.errors import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
)
from klockproxy.sandbox.h2front import H2Front, backend_context
from klockproxy.sandbox.rbac import Attributes, Authorizer, bootstrap_policy, forbidden_error
from klockproxy.sandbox.resources import APIEXT, MERGE_KEYS, RBAC, Registry, ResourceType
from klockproxy.sandbox.selectors import field_matcher, label_matcher
from klockproxy.sandbox.store import DELETED, Event, Obj, Store, TooOldError

logger = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024
JSON_TYPE = "application/json"
JSON_PATCH_TYPE = "application/json-patch+json"
MERGE_PATCH_TYPE = "application/merge-patch+json"
SMP_TYPE = "application/strategic-merge-patch+json"
APPLY_TYPE = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH_TYPE, MERGE_PATCH_TYPE, SMP_TYPE, APPLY_TYPE)
PROTOBUF_TYPE = "application/vnd.kubernetes.protobuf"
YAML_TYPE = "application/yaml"
ADMIN_USER = UserInfo("admin", uid="admin", groups=("system:masters", "system:authenticated"))
LOG_INTERVAL = 0.5
USER_KEY = web.RequestKey("klockproxy.sandbox.user", UserInfo)
WATCH_CHECK_INTERVAL = 2.0
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
CONNECT_SUBRESOURCES = ("exec", "attach", "portforward", "proxy")
EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


class ConflictError(ApiError):
    code = 409


class GoneError(ApiError):
    code = 410

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="Expired")


class MethodNotAllowedError(ApiError):
    code = 405

    def __init__(self) -> None:
        super().__init__("the server does not allow this method on the requested resource")


class UnsupportedMediaTypeError(ApiError):
    code = 415


class TooLargeError(ApiError):
    code = 413

    def __init__(self) -> None:
        super().__init__(f"Request entity too large: limit is {MAX_BODY}")


def _details(rt: ResourceType, name: str) -> StatusDetails:
    d: StatusDetails = {"name": name, "kind": rt.resource}
    if rt.group:
        d["group"] = rt.group
    return d


def not_found(rt: ResourceType, name: str) -> NotFoundError:
    return NotFoundError(f'{rt.group_resource} "{name}" not found', details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ConflictError:
    return ConflictError(
        f'{rt.group_resource} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(rt, name),
    )


def conflict(rt: ResourceType, name: str, why: str) -> ConflictError:
    return ConflictError(
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
        details=_details(rt, name),
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


@dataclass(frozen=True)
class Route:
    """A parsed request path."""

    kind: str  # "resource", "discovery", "openapi", "version", "health", "unknown"
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    rest: str = ""


def parse_path(path: str) -> Route:
    """Route a (decoded) request path. Empty segments (``//``) are not collapsed: such a path
    routes nowhere (404), so ``configmaps//x`` can never reach object ``x``."""
    trimmed = path[1:] if path.startswith("/") else path
    if trimmed.endswith("/"):
        trimmed = trimmed[:-1]
    if not trimmed:
        return Route("discovery", rest="root")
    parts = trimmed.split("/")
    if "" in parts or "." in parts or ".." in parts:
        return Route("unknown")
    head = parts[0]
    if head == "version" and len(parts) == 1:
        return Route("version")
    if head in ("healthz", "readyz", "livez"):
        return Route("health")
    if head == "openapi":
        return Route("openapi", rest="/".join(parts[1:]))
    if head == "api":
        if len(parts) == 1:
            return Route("discovery", rest="api")
        group, version, rest = "", parts[1], parts[2:]
    elif head == "apis":
        if len(parts) == 1:
            return Route("discovery", rest="apis")
        if len(parts) == 2:
            return Route("discovery", group=parts[1], rest="group")
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Route("unknown")
    if not rest:
        return Route("discovery", group=group, version=version, rest="gv")
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    if len(rest) > 3:
        return Route("unknown")
    return Route(
        "resource",
        group=group,
        version=version,
        resource=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else "",
        subresource=rest[2] if len(rest) > 2 else "",
    )


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _strict(request: web.Request) -> bool:
    """``fieldValidation=Strict``: duplicate (and unknown) fields are refused with 400."""
    return request.query.get("fieldValidation", "") == "Strict"


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type=JSON_TYPE,
    )


def _status_response(err: ApiError) -> web.Response:
    return web.Response(body=to_bytes(err.to_status()), status=err.code, content_type=JSON_TYPE)


def _copy(obj: Obj) -> Obj:
    copied: Obj = json.loads(json.dumps(obj))
    return copied


def _query_bool(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


def _dry_run(request: web.Request) -> bool:
    values = request.query.getall("dryRun", [])
    for v in values:
        if v != "All":
            raise BadRequestError(f'Invalid dry run value: "{v}", only "All" is supported')
    return bool(values)


def _wants_table(request: web.Request) -> bool:
    for part in request.headers.get("Accept", "").split(","):
        params = {p.strip() for p in part.split(";")[1:]}
        if "as=Table" in params and "g=meta.k8s.io" in params:
            return True
    return False


PARTIAL = "PartialObjectMetadata"
PARTIAL_LIST = "PartialObjectMetadataList"


def _partial_target(request: web.Request) -> str | None:
    """``PartialObjectMetadata``/``...List`` when the first Accept clause the sandbox can
    serve asks for metadata only (``application/json;as=...;g=meta.k8s.io;v=v1``)."""
    for part in request.headers.get("Accept", "").split(","):
        fields = [p.strip() for p in part.split(";")]
        params = dict(p.split("=", 1) for p in fields[1:] if "=" in p)
        if fields[0] not in ("application/json", "*/*", "application/*"):
            continue
        target = params.get("as")
        if target is None:
            return None
        if target not in (PARTIAL, PARTIAL_LIST):
            return None  # a Table, or a form the sandbox does not serve: not metadata-only
        if params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return target
    return None


def _as_partial(obj: Obj) -> Obj:
    return {"kind": PARTIAL, "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def _check_partial(target: str | None, want: str, rt: ResourceType) -> None:
    """Like the API server: asking for the list form on a single object (or the reverse) is
    406 NotAcceptable."""
    if target is not None and target != want:
        what = "a list" if want == PARTIAL_LIST else "not a list"
        raise ApiError(
            f"you requested {target}, but the requested object is {what} ({rt.kind})",
            code=406,
            reason="NotAcceptable",
        )


# Built-in kinds whose status strategy (PrepareForUpdate) resets spec and labels but stores
# the other metadata of a status write; the rest (pods keep their owner references: old
# kubelets corrupted them) keep all their metadata.
STATUS_KEEPS_METADATA = frozenset(
    {
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "ReplicationController",
        "Job",
        "CronJob",
    }
)


def _is_watch(request: web.Request) -> bool:
    return _query_bool(request, "watch")


def _write_options(request: web.Request, operation: str, dry_run: bool) -> Obj:
    """CreateOptions, UpdateOptions or PatchOptions, as the API server passes them to
    admission for this request (a PATCH that creates gets CreateOptions)."""
    kind = "CreateOptions"
    if operation == "UPDATE":
        kind = "PatchOptions" if request.method == "PATCH" else "UpdateOptions"
    extra: dict[str, Any] = {"fieldValidation": request.query.get("fieldValidation", "")}
    if kind == "PatchOptions" and _query_bool(request, "force"):
        extra["force"] = True
    return admission.operation_options(
        kind, dry_run=dry_run, field_manager=request.query.get("fieldManager", ""), **extra
    )


def _connect_options(subresource: str, request: web.Request) -> Obj:
    """PodExecOptions / PodAttachOptions / PodPortForwardOptions / PodProxyOptions from the
    query, the object a CONNECT review carries."""
    query = request.query
    if subresource == "portforward":
        ports = [int(p) for p in query.getall("ports", []) if p.isdigit()]
        out: Obj = {"kind": "PodPortForwardOptions", "apiVersion": "v1"}
        if ports:
            out["ports"] = ports
        return out
    if subresource == "proxy":
        return {"kind": "PodProxyOptions", "apiVersion": "v1"}
    kind = "PodExecOptions" if subresource == "exec" else "PodAttachOptions"
    out = {"kind": kind, "apiVersion": "v1"}
    for flag in ("stdin", "stdout", "stderr", "tty"):
        if _query_bool(request, flag):
            out[flag] = True
    if query.get("container"):
        out["container"] = query["container"]
    if subresource == "exec":
        out["command"] = query.getall("command", [])
    return out


class SandboxServer:
    """The request handling (independent of how it is served)."""

    def __init__(
        self,
        authenticator: sandbox_auth.Authenticator,
        *,
        history_size: int = 1000,
        service_addresses: Mapping[str, str] | None = None,
    ) -> None:
        self.store = Store(history_size)
        self.registry = Registry()
        self.authorizer = Authorizer(self.store)
        self.authenticator = authenticator
        self.admission = admission.Dispatcher(
            lambda: self.store.list(admission.GROUP, admission.VALIDATING, None),
            lambda name: self.store.get("", "namespaces", None, name),
            service_addresses,
            lambda group, resource: [
                rt.version for rt in self.registry if (rt.group, rt.resource) == (group, resource)
            ],
        )
        self.server_address = "127.0.0.1:6443"
        self.stopping = asyncio.Event()
        # Seconds every watch event is held back (0: none): a real API server's watch lags
        # behind its write answers (etcd, watch cache); tests of read-your-writes set it.
        self.watch_delay = 0.0
        # Requests held back until their event is set, by (method, path): a slow API server
        # for one request, for tests that other callers are not stalled behind it.
        self.held: dict[tuple[str, str], asyncio.Event] = {}
        # How many requests have been held back so far, by (method, path).
        self.held_count: dict[tuple[str, str], int] = {}
        self._seed()

    # ------------------------------------------------------------------ seeding

    def _seed(self) -> None:
        for ns in INITIAL_NAMESPACES:
            self._create_object(
                self._rt("", "namespaces"),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                "",
                manager="sandbox",
            )
        self._create_object(self._rt("", "nodes"), objects.sandbox_node(), "", manager="sandbox")
        for obj in bootstrap_policy():
            rt = self._rt(
                RBAC, "clusterroles" if obj["kind"] == "ClusterRole" else "clusterrolebindings"
            )
            self._create_object(rt, obj, "", manager="sandbox")

    def _rt(self, group: str, resource: str) -> ResourceType:
        rt = self.registry.by_group_resource(group, resource)
        if rt is None:
            raise NotFoundError("the server could not find the requested resource")
        return rt

    # ------------------------------------------------------------------ entry point

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gate = self.held.get((request.method, request.path))
        if gate is not None and not gate.is_set():
            key = (request.method, request.path)
            self.held_count[key] = self.held_count.get(key, 0) + 1
            await gate.wait()
        try:
            return await self._handle(request)
        except ApiError as e:
            return _status_response(e)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("internal error serving %s %s", request.method, request.path)
            return _status_response(ApiError("an internal error occurred", code=500))

    def _authenticate(self, request: web.Request) -> UserInfo:
        header = request.headers.get("Authorization", "")
        token: str | None = None
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        cert: bytes | None = None
        transport = request.transport
        ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_obj is not None:
            cert = ssl_obj.getpeercert(binary_form=True)
        user = self.authenticator.authenticate(token, cert)
        if user is None:
            raise UnauthorizedError()
        return user

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = unquote(request.rel_url.raw_path)
        route = parse_path(request.path)
        user = self._authenticate(request)
        user = await sandbox_auth.resolve_impersonation(user, request.headers, self.authorizer)
        request[USER_KEY] = user
        if route.kind == "unknown":
            raise NotFoundError("the server could not find the requested resource")
        if route.kind != "resource":
            verb = request.method.lower()
            if verb == "head":
                verb = "get"
            attrs = Attributes(verb, path=request.path, is_resource_request=False)
            decision = self.authorizer.authorize(user, attrs)
            if not decision.allowed:
                raise forbidden_error(user.username, attrs, decision.reason)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowedError()
            return self._non_resource(route, request)
        rt = self.registry.lookup(route.group, route.version, route.resource)
        if rt is None:
            raise NotFoundError("the server could not find the requested resource")
        verb = self._verb(request, route)
        namespace = route.namespace
        if rt.resource == "namespaces" and route.name:
            namespace = route.name
        attrs = Attributes(
            verb,
            namespace=namespace,
            api_group=rt.group,
            resource=rt.resource,
            subresource=route.subresource,
            name=route.name,
            path=path,
            is_resource_request=True,
        )
        decision = self.authorizer.authorize(user, attrs)
        if not decision.allowed:
            logger.info("forbidden: %s %s %s", user.username, verb, rt.group_resource)
            raise forbidden_error(user.username, attrs, decision.reason)
        return await self._dispatch(request, route, rt, verb, user)

    def _verb(self, request: web.Request, route: Route) -> str:
        m = request.method
        if route.subresource in CONNECT_SUBRESOURCES:
            return "create" if m == "POST" else "get"
        if m in ("GET", "HEAD"):
            if route.name:
                return "get"
            return "watch" if _is_watch(request) else "list"
        if m == "POST":
            return "create"
        if m == "PUT":
            return "update"
        if m == "PATCH":
            return "patch"
        if m == "DELETE":
            return "delete" if route.name else "deletecollection"
        raise MethodNotAllowedError()

    # ------------------------------------------------------------------ non-resource

    def _non_resource(self, route: Route, request: web.Request) -> web.StreamResponse:
        if route.kind == "version":
            return _json_response(
                {
                    "major": "1",
                    "minor": "37",
                    "emulationMajor": "1",
                    "emulationMinor": "37",
                    "minCompatibilityMajor": "1",
                    "minCompatibilityMinor": "36",
                    "gitVersion": f"v1.37.0-klockproxy-sandbox+{__version__}",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.25.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if route.kind == "health":
            return web.Response(text="ok", content_type="text/plain")
        if route.kind == "discovery":
            doc: Obj | None
            if route.rest == "root":
                paths = ["/api", "/api/v1", "/apis", "/healthz", "/openapi/v3", "/version"]
                paths += [f"/apis/{g}/{v}" for g, vs in self.registry.group_versions() for v in vs]
                doc = {"paths": sorted(paths)}
            elif route.rest == "api":
                doc = discovery.api_versions(self.server_address)
            elif route.rest == "apis":
                doc = discovery.api_group_list(self.registry)
            elif route.rest == "group":
                doc = discovery.api_group(self.registry, route.group)
            else:
                doc = discovery.api_resource_list(self.registry, route.group, route.version)
            if doc is None:
                raise NotFoundError("the server could not find the requested resource")
            # Aggregated discovery is not offered: plain JSON makes kubectl fall back.
            return _json_response(doc)
        if route.kind == "openapi":
            if route.rest == "v3":
                return _json_response(openapi.index(self.registry))
            if route.rest.startswith("v3/"):
                parts = route.rest[3:].split("/")
                data: bytes | None = None
                if len(parts) == 2 and parts[0] == "api":
                    data = openapi.document_bytes(self.registry, "", parts[1])
                elif len(parts) == 3 and parts[0] == "apis":
                    data = openapi.document_bytes(self.registry, parts[1], parts[2])
                if data is not None:
                    return web.Response(
                        body=data,
                        content_type=JSON_TYPE,
                        headers={"Cache-Control": "public, immutable"}
                        if "hash" in request.query
                        else {},
                    )
        raise NotFoundError("the server could not find the requested resource")

    # ------------------------------------------------------------------ bodies

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise TooLargeError()
        data = bytearray()
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_BODY:
                raise TooLargeError()
        return bytes(data)

    def _decode(
        self, raw: bytes, content_type: str, rt: ResourceType | None, *, strict: bool = False
    ) -> Obj:
        mtype = _media_type(content_type) or JSON_TYPE
        # The sandbox's own decoding (bodies.py), not the core's: it reads bodies as the API
        # server does (duplicate keys, YAML merge keys and all), so the tests of the proxy,
        # whose strict decoding is the code under test, have an independent oracle.
        if mtype == JSON_TYPE:
            try:
                value = bodies.decode_json(raw, typed=rt is None or rt.builtin, strict=strict)
            except bodies.DuplicateFieldError as e:
                raise BadRequestError(f"strict decoding error: {e}") from e
            except (ValueError, RecursionError) as e:
                raise BadRequestError(f"couldn't get version/kind; json parse error: {e}") from e
        elif mtype in (YAML_TYPE, "application/x-yaml", "text/yaml"):
            value = self._decode_yaml(raw, strict=strict)
        elif mtype == PROTOBUF_TYPE:
            if rt is not None and not rt.builtin:
                raise UnsupportedMediaTypeError(
                    f"the body of the request was in an unknown format - accepted media types "
                    f'include: application/json, application/yaml (got "{mtype}")'
                )
            value = self._decode_protobuf(raw)
        else:
            raise UnsupportedMediaTypeError(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json, application/yaml, {PROTOBUF_TYPE}"
            )
        if not isinstance(value, dict):
            raise BadRequestError("the body of the request must be a JSON object")
        return value

    @staticmethod
    def _decode_yaml(raw: bytes, *, strict: bool = False) -> Obj:
        try:
            if raw.lstrip()[:1] == b"{":
                # JSON is YAML, but PyYAML trips on some valid JSON (tabs between tokens).
                with contextlib.suppress(ValueError):
                    return SandboxServer._object(bodies.decode_json(raw, strict=strict))
            value = bodies.decode_yaml(raw, strict=strict)
        except bodies.DuplicateFieldError as e:
            raise BadRequestError(f"strict decoding error: {e}") from e
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
            raise BadRequestError(f"error converting YAML to JSON: {e}") from e
        return SandboxServer._object(value)

    @staticmethod
    def _object(value: Any) -> Obj:
        if not isinstance(value, dict):
            raise BadRequestError("the body of the request must be a JSON object")
        return value

    def _decode_protobuf(self, raw: bytes) -> Obj:
        try:
            value: Obj = protobuf.decode_k8s_protobuf(raw, strict=True)
        except protobuf.UnsupportedProtobufError as e:
            raise UnsupportedMediaTypeError(
                f"the sandbox cannot decode this protobuf body ({e}); send JSON instead"
            ) from e
        except DecodeError as e:
            raise BadRequestError(f"invalid protobuf body: {e}") from e
        return value

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(
        self, request: web.Request, route: Route, rt: ResourceType, verb: str, user: UserInfo
    ) -> web.StreamResponse:
        if rt.namespaced and not route.namespace and verb not in ("list", "watch"):
            raise NotFoundError("the server could not find the requested resource")
        if not rt.namespaced and route.namespace and rt.resource != "namespaces":
            raise NotFoundError("the server could not find the requested resource")
        if route.subresource:
            return await self._subresource(request, route, rt, verb, user)
        namespace = "" if rt.resource == "namespaces" and route.name else route.namespace
        if verb not in rt.verbs:
            raise MethodNotAllowedError()
        if (verb in ("update", "patch") and not route.name) or (verb == "create" and route.name):
            raise MethodNotAllowedError()
        if not rt.storable:
            body = self._decode(await self._read_body(request), request.content_type, rt)
            self._check_type(rt, body)
            await self._admit(
                request,
                rt,
                "CREATE",
                namespace=namespace,
                name=str((body.get("metadata") or {}).get("name") or ""),
                obj={**body, "apiVersion": rt.api_version, "kind": rt.kind},
            )
            return _json_response(self._review(rt, route, body, user), 201)
        if verb == "get":
            obj = self.store.get(rt.group, rt.resource, namespace, route.name)
            if obj is None:
                raise not_found(rt, route.name)
            return self._respond_object(request, rt, obj)
        if verb == "list":
            return self._list(request, rt, namespace or None)
        if verb == "watch":
            return await self._watch(request, rt, namespace or None)
        if verb == "create":
            raw = await self._read_body(request)
            body = self._decode(raw, request.content_type, rt, strict=_strict(request))
            created = await self._create(request, rt, namespace, body)
            return self._respond_object(request, rt, created, 201)
        if verb == "update":
            raw = await self._read_body(request)
            body = self._decode(raw, request.content_type, rt, strict=_strict(request))
            updated, was_created = await self._update(request, rt, namespace, route.name, body)
            return self._respond_object(request, rt, updated, 201 if was_created else 200)
        if verb == "patch":
            raw = await self._read_body(request)
            patched, was_created = await self._patch(request, rt, namespace, route.name, raw)
            return self._respond_object(request, rt, patched, 201 if was_created else 200)
        if verb == "delete":
            raw = await self._read_body(request)
            options = self._decode(raw, request.content_type, rt) if raw.strip() else {}
            deleted = await self._delete(request, rt, namespace, route.name, options)
            if rt.builtin and rt.kind in ("Pod", "Namespace"):
                # Graceful kinds answer with the object (the API server's ReturnDeletedObject).
                return _json_response(deleted)
            details = _details(rt, route.name)
            details["uid"] = deleted["metadata"].get("uid", "")
            return _json_response(success(details))
        if verb == "deletecollection":
            return _json_response(await self._delete_collection(request, rt, namespace or None))
        raise MethodNotAllowedError()

    def _respond_object(
        self, request: web.Request, rt: ResourceType, obj: Obj, status: int = 200
    ) -> web.Response:
        partial = _partial_target(request)
        if partial is not None and request.method == "GET":
            _check_partial(partial, PARTIAL, rt)
            return _json_response(_as_partial(obj), status)
        if _wants_table(request) and request.method == "GET":
            include = request.query.get("includeObject", "Metadata")
            return _json_response(
                tables.table(
                    rt,
                    [obj],
                    include_object=include,
                    list_metadata={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                ),
                status,
            )
        return _json_response(obj, status)

    # ------------------------------------------------------------------ list / watch

    def _matcher(self, request: web.Request, rt: ResourceType) -> Callable[[Obj], bool]:
        label = label_matcher(request.query.get("labelSelector", ""))
        fields = field_matcher(request.query.get("fieldSelector", ""), rt.group, rt.resource)
        return lambda o: label(o) and fields(o)

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.Response:
        match = self._matcher(request, rt)
        items = [o for o in self.store.list(rt.group, rt.resource, namespace) if match(o)]
        rv = self.store.resource_version
        meta: Obj = {"resourceVersion": str(rv)}
        token = request.query.get("continue", "")
        if token:
            list_rv, after = self._decode_continue(token)
            items = [o for o in items if self._key_of(o) > after]
            rv = list_rv
            meta["resourceVersion"] = str(rv)
        limit_text = request.query.get("limit", "")
        limit = int(limit_text) if limit_text.isdigit() else 0
        if limit and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            meta["continue"] = self._encode_continue(rv, self._key_of(items[-1]))
            meta["remainingItemCount"] = remaining
        if _wants_table(request):
            include = request.query.get("includeObject", "Metadata")
            return _json_response(
                tables.table(rt, items, include_object=include, list_metadata=meta)
            )
        partial = _partial_target(request)
        if partial is not None:
            _check_partial(partial, PARTIAL_LIST, rt)
            return _json_response(
                {
                    "kind": PARTIAL_LIST,
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                    "items": [_as_partial(o) for o in items],
                }
            )
        return _json_response(
            {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items}
        )

    @staticmethod
    def _key_of(obj: Obj) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace", "") or "", meta["name"]

    @staticmethod
    def _encode_continue(rv: int, key: tuple[str, str]) -> str:
        raw = json.dumps({"v": "sandbox/1", "rv": rv, "start": list(key)}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            rv = int(data["rv"])
            ns, name = data["start"]
            key = (str(ns), str(name))
        except (binascii.Error, ValueError, KeyError, TypeError) as e:
            raise BadRequestError("continue key is not valid: " + type(e).__name__) from e
        if rv < self.store.oldest_watchable:
            raise GoneError(EXPIRED_CONTINUE)
        return rv, key

    async def _watch(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        match = self._matcher(request, rt)
        rv_text = request.query.get("resourceVersion", "")
        initial = _query_bool(request, "sendInitialEvents")
        since: int | None
        if rv_text in ("", "0") or initial:
            since = None
        else:
            try:
                since = int(rv_text)
            except ValueError as e:
                raise BadRequestError(f'invalid resource version "{rv_text}"') from e
        timeout_text = request.query.get("timeoutSeconds", "")
        deadline = time.monotonic() + int(timeout_text) if timeout_text.isdigit() else None
        as_table = _wants_table(request)
        partial = _partial_target(request)
        _check_partial(partial, PARTIAL, rt)
        include = request.query.get("includeObject", "Metadata")
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON_TYPE})
        response.enable_chunked_encoding()
        try:
            watcher, backlog = self.store.watch(rt.group, rt.resource, namespace, since, match)
        except TooOldError as e:
            await response.prepare(request)
            status = failure(
                410, f"too old resource version: {e.requested} ({e.oldest})", "Expired"
            )
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            return response
        first = [True]

        def encode(ev_type: str, obj: Obj) -> bytes:
            payload: Obj = obj
            if partial is not None and ev_type != "BOOKMARK":
                payload = _as_partial(obj)
            elif as_table and ev_type != "BOOKMARK":
                payload = tables.table(
                    rt,
                    [obj],
                    include_object=include,
                    list_metadata={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                    with_columns=first[0],
                )
                first[0] = False
            return (
                json.dumps({"type": ev_type, "object": payload}, separators=(",", ":")).encode()
                + b"\n"
            )

        try:
            await response.prepare(request)
            for ev in backlog:
                await response.write(encode(ev.type, ev.obj))
            if initial:
                bookmark = {
                    "kind": rt.kind,
                    "apiVersion": rt.api_version,
                    "metadata": {
                        "resourceVersion": str(self.store.resource_version),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(encode("BOOKMARK", bookmark))
            while not self.stopping.is_set():
                timeout = WATCH_CHECK_INTERVAL
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=timeout)
                except TimeoutError:
                    # Quiet resource: notice a client that left instead of waiting forever.
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        break
                    continue
                if item is None:
                    if watcher.overflowed:
                        status = failure(410, "the watch fell too far behind", "Expired")
                        await response.write(
                            json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"
                        )
                    break
                seen = item.as_seen_by(match)
                if seen is None:
                    continue
                if self.watch_delay:
                    await asyncio.sleep(self.watch_delay)
                await response.write(encode(seen, item.obj))
        except (ConnectionResetError, ConnectionError):
            logger.debug("watch client of %s went away", rt.resource)
        finally:
            self.store.unwatch(watcher)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # ------------------------------------------------------------------ admission

    async def _admit(
        self,
        request: web.Request,
        rt: ResourceType,
        operation: str,
        *,
        namespace: str,
        name: str,
        obj: Obj | None = None,
        old: Obj | None = None,
        subresource: str = "",
        kind: tuple[str, str, str] | None = None,
        options: Obj | None = None,
        dry_run: bool | None = None,
    ) -> None:
        """Have the validating webhooks admit one operation (raises their verdict)."""
        user = request.get(USER_KEY)
        if user is None:
            return
        if dry_run is None:
            dry_run = _dry_run(request)
        if options is None and operation in ("CREATE", "UPDATE"):
            options = _write_options(request, operation, dry_run)
        kind_group, kind_version, kind_name = kind or (rt.group, rt.version, rt.kind)
        attrs = admission.Attributes(
            operation=operation,
            group=rt.group,
            version=rt.version,
            resource=rt.resource,
            subresource=subresource,
            kind_group=kind_group,
            kind_version=kind_version,
            kind=kind_name,
            namespace=namespace,
            name=name,
            user=user,
            obj=obj,
            old=old,
            dry_run=dry_run,
            options=options,
        )
        await self.admission.validate(attrs)

    # ------------------------------------------------------------------ writes

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if rt.namespaced and self.store.get("", "namespaces", None, namespace) is None:
            ns_rt = self._rt("", "namespaces")
            raise not_found(ns_rt, namespace)

    def _check_type(self, rt: ResourceType, body: Obj) -> None:
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if kind and kind != rt.kind:
            raise BadRequestError(
                f"the kind of the object ({kind}) does not match the kind of the resource "
                f"({rt.kind})"
            )
        if api_version and api_version != rt.api_version:
            raise BadRequestError(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})"
            )
        if not isinstance(body.get("metadata", {}), dict):
            raise BadRequestError("metadata must be an object")

    def _managed(self, request: web.Request, rt: ResourceType, operation: str) -> list[Obj]:
        manager = request.query.get("fieldManager") or "unknown"
        return [
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": rt.api_version,
                "time": objects.now_rfc3339(),
                "fieldsType": "FieldsV1",
                "fieldsV1": {},
            }
        ]

    async def _create(
        self, request: web.Request, rt: ResourceType, namespace: str, body: Obj
    ) -> Obj:
        self._check_type(rt, body)
        meta = body.setdefault("metadata", {})
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise BadRequestError(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
        return await self._admitted_create(request, rt, body, namespace)

    async def _admitted_create(
        self,
        request: web.Request,
        rt: ResourceType,
        body: Obj,
        namespace: str,
        *,
        operation: str = "Update",
        review_namespace: str | None = None,
    ) -> Obj:
        """Validate and default ``body``, have the webhooks admit it, then store it."""
        dry_run = _dry_run(request)
        obj = self._build_created(
            rt,
            body,
            namespace,
            manager=request.query.get("fieldManager") or "unknown",
            operation=operation,
            field_validation=request.query.get("fieldValidation", ""),
            user=request.get(USER_KEY),
        )
        await self._admit(
            request,
            rt,
            "CREATE",
            namespace=namespace if review_namespace is None else review_namespace,
            name=obj["metadata"]["name"],
            obj=obj,
        )
        return self._store_created(rt, obj, namespace, dry_run)

    def _create_object(
        self,
        rt: ResourceType,
        body: Obj,
        namespace: str,
        *,
        manager: str,
        dry_run: bool = False,
        operation: str = "Update",
        field_validation: str = "",
        user: UserInfo | None = None,
    ) -> Obj:
        """Create without admission webhooks (the sandbox's own objects)."""
        obj = self._build_created(
            rt,
            body,
            namespace,
            manager=manager,
            operation=operation,
            field_validation=field_validation,
            user=user,
        )
        return self._store_created(rt, obj, namespace, dry_run)

    def _build_created(
        self,
        rt: ResourceType,
        body: Obj,
        namespace: str,
        *,
        manager: str,
        operation: str = "Update",
        field_validation: str = "",
        user: UserInfo | None = None,
    ) -> Obj:
        """The object a create would store: validated, defaulted, not yet stored."""
        obj = _copy(body)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + secrets.token_hex(3)[:5]
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(k, None)
        self._validate(rt, obj, field_validation)
        if rt.kind == "Secret" and rt.builtin:
            objects.stringdata_to_data(obj)
        self._check_namespace(rt, namespace)
        if user is not None and rt.group == RBAC:
            escalation.check_write(self.authorizer, self.store, user, rt.resource, obj)
        meta["uid"] = objects.new_uid()
        meta["creationTimestamp"] = objects.now_rfc3339()
        if rt.has_spec:
            meta["generation"] = 1
        meta["managedFields"] = [
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": rt.api_version,
                "time": meta["creationTimestamp"],
                "fieldsType": "FieldsV1",
                "fieldsV1": {},
            }
        ]
        if not rt.builtin and "status" in rt.subresources:
            obj.pop("status", None)
        self._prepare(rt, obj, None)
        return obj

    def _store_created(self, rt: ResourceType, obj: Obj, namespace: str, dry_run: bool) -> Obj:
        # Checked after admission, as the API server's storage does (webhooks see creates
        # of names that turn out to exist).
        name = obj["metadata"]["name"]
        if self.store.get(rt.group, rt.resource, namespace, name) is not None:
            raise already_exists(rt, name)
        if dry_run:
            return obj
        stored = self.store.put(rt.group, rt.resource, obj)
        self._after_write(rt, stored, None)
        return stored

    @staticmethod
    def _validate(rt: ResourceType, obj: Obj, field_validation: str = "") -> None:
        """Check ``obj`` (422 Invalid, 400 for wrong types); custom resources are pruned to
        their schema in place, and unknown fields refused with ``fieldValidation=Strict``."""
        if rt.schema is not None:
            pruned, result = schema.prune_and_validate(rt.schema, obj)
            if result.unknown and field_validation == "Strict":
                fields = ", ".join(f'unknown field "{f}"' for f in result.unknown)
                raise BadRequestError(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    f"strict decoding error: {fields}"
                )
            if result.causes:
                name = str((obj.get("metadata") or {}).get("name", ""))
                raise InvalidError(rt.kind, name, result.causes, group=rt.group)
            obj.clear()
            obj.update(pruned)
        objects.check_shape(rt, obj)
        if rt.builtin and rt.group == admission.GROUP and rt.resource == admission.VALIDATING:
            # Defaults first: the API server defaults while decoding, then validates.
            admission.set_defaults(obj)
            admission.validate_configuration(obj)
        try:
            objects.validate(rt, obj)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise BadRequestError(f"the {rt.kind} object is malformed: {e}") from e

    @staticmethod
    def _prepare(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Defaults and status; a nested value of the wrong JSON type is a 400, as the API
        server's decoder would answer."""
        try:
            objects.prepare(rt, obj, old)
            objects.finish(rt, obj)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise BadRequestError(f"the {rt.kind} object is malformed: {e}") from e

    def _after_write(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt.group == APIEXT and rt.resource == "customresourcedefinitions":
            before = {(t.group, t.version, t.resource) for t in self.registry.of_crd(obj)}
            after = {(t.group, t.version, t.resource) for t in self.registry.register_crd(obj)}
            for group, _, resource in before - after:
                # A version no longer served: the API server ends the watches of it (they
                # relist and find it gone), as it does when it replaces a CRD's storage.
                self.store.close_watchers_of(group, resource)
        elif rt.group == "" and rt.resource == "namespaces" and old is None:
            sa_rt = self._rt("", "serviceaccounts")
            name = obj["metadata"]["name"]
            if self.store.get("", "serviceaccounts", name, "default") is None:
                self._create_object(
                    sa_rt,
                    {"metadata": {"name": "default"}},
                    name,
                    manager="sandbox",
                )

    async def _merge_update(
        self,
        request: web.Request,
        rt: ResourceType,
        old: Obj,
        new: Obj,
        *,
        subresource: str = "",
    ) -> Obj:
        """Store ``new`` as the successor of ``old``: identity and server fields kept,
        optimistic concurrency checked, generation bumped on spec changes; the webhooks
        admit the UPDATE in between (a Scale for ``scale``)."""
        obj = self._build_update(request, rt, old, new, subresource=subresource)
        review_obj, review_old = obj, old
        kind: tuple[str, str, str] | None = None
        if subresource == "scale":
            review_obj, review_old = self._scale_of(obj), self._scale_of(old)
            kind = ("autoscaling", "v1", "Scale")
        await self._admit(
            request,
            rt,
            "UPDATE",
            namespace=self._review_namespace(rt, old),
            name=old["metadata"]["name"],
            obj=review_obj,
            old=review_old,
            subresource=subresource,
            kind=kind,
        )
        current = self.store.get(
            rt.group, rt.resource, old["metadata"].get("namespace"), old["metadata"]["name"]
        )
        if current is None:
            raise not_found(rt, old["metadata"]["name"])
        if current["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]:
            # Written by someone else while the webhooks were deciding.
            raise conflict(rt, old["metadata"]["name"], STALE)
        if _dry_run(request):
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return obj
        stored = self.store.put(rt.group, rt.resource, obj)
        self._after_write(rt, stored, old)
        return stored

    @staticmethod
    def _review_namespace(rt: ResourceType, obj: Obj) -> str:
        """The request namespace the API server reports: a Namespace's own name for
        requests on an existing Namespace."""
        meta = obj.get("metadata") or {}
        if rt.group == "" and rt.resource == "namespaces":
            return str(meta.get("name") or "")
        return str(meta.get("namespace") or "")

    def _build_update(
        self,
        request: web.Request,
        rt: ResourceType,
        old: Obj,
        new: Obj,
        *,
        subresource: str = "",
    ) -> Obj:
        """The successor of ``old`` an update would store: validated, not yet stored."""
        name = old["metadata"]["name"]
        new_meta = new.get("metadata")
        if not isinstance(new_meta, dict):
            raise BadRequestError("metadata must be an object")
        rv = new_meta.get("resourceVersion")
        if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name, STALE)
        if new_meta.get("uid") not in (None, "", old["metadata"]["uid"]):
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {new_meta['uid']}, UID in object "
                f"meta: {old['metadata']['uid']}",
            )
        if new_meta.get("name") not in (None, name):
            raise BadRequestError(
                f"the name of the object ({new_meta.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        if rt.namespaced and new_meta.get("namespace") not in (
            None,
            "",
            old["metadata"].get("namespace"),
        ):
            raise BadRequestError(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        obj = _copy(new)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        meta = obj["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        has_status = "status" in rt.subresources
        if subresource == "status":
            written = obj["metadata"]
            obj = {**_copy(old), "status": obj.get("status")}
            meta = obj["metadata"]
            if rt.builtin and rt.kind in STATUS_KEEPS_METADATA:
                # These kinds' status strategies reset only spec and labels: the rest of the
                # metadata written (owner references, annotations) is stored.
                for key in ("ownerReferences", "annotations"):
                    if key in written:
                        meta[key] = written[key]
                    else:
                        meta.pop(key, None)
        elif has_status:
            if "status" in old:
                obj["status"] = _copy(old["status"])
            else:
                obj.pop("status", None)
        self._validate(rt, obj, request.query.get("fieldValidation", ""))
        if rt.kind == "Secret" and rt.builtin:
            objects.stringdata_to_data(obj)
        user = request.get(USER_KEY)
        if user is not None and rt.group == RBAC:
            escalation.check_write(self.authorizer, self.store, user, rt.resource, obj)
        if rt.has_spec:
            generation = int(old["metadata"].get("generation", 1))
            if self._spec_of(obj) != self._spec_of(old):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
        if rt.builtin and rt.kind == "Pod" and subresource not in ("status", "ephemeralcontainers"):
            old_spec = _copy(old.get("spec") or {})
            new_spec = _copy(obj.get("spec") or {})
            objects.default_pod_spec(new_spec)
            for k in ("nodeName", "serviceAccountName", "serviceAccount", "tolerations"):
                if k not in new_spec and k in old_spec:
                    new_spec[k] = old_spec[k]
            changed = {
                k for k in set(old_spec) | set(new_spec) if old_spec.get(k) != new_spec.get(k)
            }
            immutable = changed - {
                "containers",
                "initContainers",
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            }
            images_only = all(
                (a or {}).get("name") == (b or {}).get("name")
                for a, b in zip(
                    old_spec.get("containers") or [], new_spec.get("containers") or [], strict=False
                )
            ) and len(old_spec.get("containers") or []) == len(new_spec.get("containers") or [])
            if immutable or not images_only:
                raise InvalidError(
                    "Pod",
                    name,
                    [
                        {
                            "reason": "FieldValueForbidden",
                            "message": "Forbidden: pod updates may not change fields other than "
                            "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                            "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions "
                            "to existing tolerations), `spec.terminationGracePeriodSeconds` "
                            "(allow it to be set to 1 if it was previously negative)",
                            "field": "spec",
                        }
                    ],
                )
        managed = [
            m
            for m in old["metadata"].get("managedFields") or []
            if m.get("manager") != (request.query.get("fieldManager") or "unknown")
        ]
        op = "Apply" if _media_type(request.content_type) == APPLY_TYPE else "Update"
        managed.extend(self._managed(request, rt, op))
        if meta.get("managedFields") is None or op == "Apply" or request.method != "PATCH":
            meta["managedFields"] = managed
        self._prepare(rt, obj, old)
        return obj

    @staticmethod
    def _spec_of(obj: Obj) -> Any:
        if "spec" in obj:
            return obj.get("spec")
        return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

    async def _update(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str, body: Obj
    ) -> tuple[Obj, bool]:
        self._check_type(rt, body)
        old = self.store.get(rt.group, rt.resource, namespace, name)
        if old is None:
            raise not_found(rt, name)
        return await self._merge_update(request, rt, old, body), False

    async def _patch(
        self, request: web.Request, rt: ResourceType, namespace: str, name: str, raw: bytes
    ) -> tuple[Obj, bool]:
        content_type = request.headers.get("Content-Type", "")
        mtype = _media_type(content_type)
        if mtype not in PATCH_TYPES:
            raise UnsupportedMediaTypeError(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)}"
            )
        old = self.store.get(rt.group, rt.resource, namespace, name)
        if old is None:
            if mtype != APPLY_TYPE:
                raise not_found(rt, name)
            body = self._decode_yaml(raw, strict=_strict(request))
            self._check_type(rt, body)
            body_name = (body.get("metadata") or {}).get("name")
            if body_name not in (None, name):
                raise BadRequestError(
                    f"the name of the object ({body_name}) does not match the name on the URL "
                    f"({name})"
                )
            body.setdefault("metadata", {})["name"] = name
            created = await self._admitted_create(
                request,
                rt,
                body,
                namespace,
                operation="Apply",
                # PATCH .../namespaces/NAME names the namespace, as for any request on it.
                review_namespace=name if rt.resource == "namespaces" and not rt.group else None,
            )
            return created, True
        patched = self._apply_patch(rt, old, raw, content_type, strict=_strict(request))
        return await self._merge_update(request, rt, old, patched), False

    def _apply_patch(
        self, rt: ResourceType, old: Obj, raw: bytes, content_type: str, *, strict: bool = False
    ) -> Obj:
        return self._patched(
            old, raw, content_type, (rt.group, rt.kind), builtin=rt.builtin, strict=strict
        )

    def _patched(
        self,
        old: Obj,
        raw: bytes,
        content_type: str,
        kind_key: tuple[str, str],
        *,
        builtin: bool,
        strict: bool = False,
    ) -> Obj:
        """``raw`` of patch type ``content_type`` applied to ``old``.

        JSON and merge patches are the sandbox's own (bodies.py). Strategic merge (and apply,
        which the sandbox treats as a strategic merge of the applied configuration) is the
        core's engine: no independent implementation exists in Python, and the golden vectors
        of tests/core/test_patches_golden.py check it against Kubernetes' own test cases.
        """
        mtype = _media_type(content_type)
        if mtype in (JSON_PATCH_TYPE, MERGE_PATCH_TYPE):
            result = bodies.apply_json_or_merge_patch(old, raw, mtype == JSON_PATCH_TYPE)
        elif mtype == SMP_TYPE and builtin:
            try:
                patch = bodies.decode_json(raw)
            except ValueError as e:
                raise BadRequestError(str(e)) from e
            result = self._strategic(old, patch, kind_key)
        elif mtype == APPLY_TYPE:
            applied = self._decode_yaml(raw, strict=strict)
            if builtin and kind_key in MERGE_KEYS:
                result = self._strategic(old, applied, kind_key)
            else:
                result = bodies.merge_patch(old, applied)
        else:
            raise UnsupportedMediaTypeError(
                "the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(t for t in PATCH_TYPES if builtin or t != SMP_TYPE)}"
            )
        if not isinstance(result, dict):
            raise BadRequestError("the patched object is not a JSON object")
        return result

    @staticmethod
    def _strategic(old: Obj, patch: Any, kind_key: tuple[str, str]) -> Obj:
        if not isinstance(patch, dict):
            raise BadRequestError("a strategic merge patch must be a JSON object")
        try:
            return strategic_merge_patch(old, patch, kind_key, merge_keys=MERGE_KEYS)
        except UnsupportedPatchError as e:
            raise UnsupportedMediaTypeError(str(e)) from e
        except PatchError as e:
            raise BadRequestError(str(e)) from e

    async def _delete(
        self,
        request: web.Request,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: Obj,
        *,
        admit: bool = True,
    ) -> Obj:
        """Delete one object; ``admit=False`` for an eviction, whose CREATE was admitted
        instead (the API server sends no DELETE review for the evicted pod)."""
        old = self.store.get(rt.group, rt.resource, namespace, name)
        if old is None:
            raise not_found(rt, name)
        pre = options.get("preconditions") or {}
        if not isinstance(pre, dict):
            raise BadRequestError("preconditions must be an object")
        uid = pre.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{old['metadata']['uid']}",
            )
        rv = pre.get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion "
                f"in object meta: {old['metadata']['resourceVersion']}",
            )
        dry_run = _dry_run(request) or options.get("dryRun") == ["All"]
        if rt.group == "" and rt.resource == "namespaces" and name in PROTECTED_NAMESPACES:
            raise ForbiddenError(
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                details={"name": name, "kind": "namespaces"},
            )
        if admit:
            await self._admit(
                request,
                rt,
                "DELETE",
                namespace=self._review_namespace(rt, old),
                name=name,
                old=old,
                options=self._delete_options(request, options),
                dry_run=dry_run,
            )
        if dry_run:
            return old
        current = self.store.get(rt.group, rt.resource, namespace, name)
        if current is None:
            raise not_found(rt, name)
        return self._remove(rt, current)

    @staticmethod
    def _delete_options(request: web.Request, options: Obj) -> Obj:
        """The DeleteOptions the API server hands admission (meta.k8s.io/v1)."""
        extra = {k: v for k, v in options.items() if k not in ("kind", "apiVersion", "dryRun")}
        for key in ("gracePeriodSeconds", "propagationPolicy"):
            if key in request.query and key not in extra:
                value: Any = request.query[key]
                if key == "gracePeriodSeconds" and str(value).lstrip("-").isdigit():
                    value = int(value)
                extra[key] = value
        dry_run = bool(request.query.getall("dryRun", [])) or options.get("dryRun") == ["All"]
        return admission.operation_options("DeleteOptions", dry_run=dry_run, **extra)

    def _remove(self, rt: ResourceType, old: Obj) -> Obj:
        meta = old["metadata"]
        if rt.group == "" and rt.resource == "namespaces":
            for group, resource in self.store.namespaced_resources():
                if (group, resource) == ("", "namespaces"):
                    continue
                for obj in self.store.list(group, resource, meta["name"]):
                    self.store.remove(group, resource, meta["name"], obj["metadata"]["name"])
        gone = self.store.remove(rt.group, rt.resource, meta.get("namespace"), meta["name"])
        if rt.group == APIEXT and rt.resource == "customresourcedefinitions":
            for removed in self.registry.unregister_crd(meta["name"]):
                if self.registry.by_group_resource(removed.group, removed.resource) is None:
                    self.store.drop_resource(removed.group, removed.resource)
        return gone or old

    async def _delete_collection(
        self, request: web.Request, rt: ResourceType, namespace: str | None
    ) -> Obj:
        match = self._matcher(request, rt)
        dry_run = _dry_run(request)
        raw = await self._read_body(request)
        body = self._decode(raw, request.content_type, rt) if raw.strip() else {}
        options = self._delete_options(request, body)
        deleted = []
        for obj in self.store.list(rt.group, rt.resource, namespace):
            if not match(obj):
                continue
            # One review per object, named "" as the API server's DeleteCollection sends
            # them (its admission attributes are those of the collection request).
            await self._admit(
                request,
                rt,
                "DELETE",
                namespace=namespace or "",
                name="",
                old=obj,
                options=options,
                dry_run=dry_run,
            )
            if dry_run:
                deleted.append(obj)
                continue
            current = self.store.get(
                rt.group, rt.resource, obj["metadata"].get("namespace"), obj["metadata"]["name"]
            )
            if current is not None:
                deleted.append(self._remove(rt, current))
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": deleted,
        }

    # ------------------------------------------------------------------ subresources

    async def _subresource(
        self, request: web.Request, route: Route, rt: ResourceType, verb: str, user: UserInfo
    ) -> web.StreamResponse:
        sub = route.subresource
        if sub not in rt.subresources:
            raise NotFoundError("the server could not find the requested resource")
        namespace = "" if rt.resource == "namespaces" else route.namespace
        sub_verbs = rt.subresources[sub][1]
        if sub in CONNECT_SUBRESOURCES:
            self._must_get(rt, namespace, route.name)
            await self._admit(
                request,
                rt,
                "CONNECT",
                namespace=namespace,
                name=route.name,
                obj=_connect_options(sub, request),
                subresource=sub,
                kind=("", "v1", rt.subresources[sub][0]),
            )
            raise BadRequestError(
                f"the sandbox runs no containers: pods/{sub} is not available on the "
                "klockproxy sandbox API server"
            )
        if verb not in sub_verbs:
            raise MethodNotAllowedError()
        obj = self._must_get(rt, namespace, route.name)
        if sub == "log":
            return await self._log(request, obj)
        if sub == "eviction":
            raw = await self._read_body(request)
            body = self._decode(raw, request.content_type, rt) if raw.strip() else {}
            options = body.get("deleteOptions") or {}
            if not isinstance(options, dict):
                raise BadRequestError("deleteOptions must be an object")
            eviction = _copy(body)
            eviction.setdefault("apiVersion", "policy/v1")
            eviction.setdefault("kind", "Eviction")
            ev_meta = eviction.get("metadata")
            if not isinstance(ev_meta, dict):
                ev_meta = eviction["metadata"] = {}
            ev_meta.setdefault("name", route.name)
            ev_meta.setdefault("namespace", namespace)
            await self._admit(
                request,
                rt,
                "CREATE",
                namespace=namespace,
                name=route.name,
                obj=eviction,
                subresource="eviction",
                kind=("policy", "v1", "Eviction"),
            )
            await self._delete(request, rt, namespace, route.name, options, admit=False)
            return _json_response(success(), 201)
        if sub == "token":
            body = self._decode(await self._read_body(request), request.content_type, rt)
            await self._admit(
                request,
                rt,
                "CREATE",
                namespace=namespace,
                name=route.name,
                obj={**body, "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"},
                subresource="token",
                kind=("authentication.k8s.io", "v1", "TokenRequest"),
            )
            result = reviews.create_token_request(
                namespace, route.name, obj, body, self.authenticator
            )
            return _json_response(result, 201)
        if sub == "scale":
            return await self._scale(request, rt, obj, verb)
        if sub == "binding":
            raise MethodNotAllowedError()
        # status, ephemeralcontainers, finalize: views of the object itself
        if verb == "get":
            return _json_response(obj)
        if verb == "update":
            body = self._decode(await self._read_body(request), request.content_type, rt)
            self._check_type(rt, body)
            new = body
        else:
            raw = await self._read_body(request)
            new = self._apply_patch(
                rt, obj, raw, request.headers.get("Content-Type", ""), strict=_strict(request)
            )
        if sub == "ephemeralcontainers":
            if not isinstance(new.get("spec") or {}, dict) or not isinstance(
                new.get("metadata") or {}, dict
            ):
                raise BadRequestError("spec and metadata must be objects")
            merged = _copy(obj)
            merged.setdefault("spec", {})["ephemeralContainers"] = (new.get("spec") or {}).get(
                "ephemeralContainers"
            )
            merged["metadata"]["resourceVersion"] = new.get("metadata", {}).get(
                "resourceVersion", ""
            )
            new = merged
        stored = await self._merge_update(request, rt, obj, new, subresource=sub)
        return _json_response(stored)

    def _must_get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(rt.group, rt.resource, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def _scale_of(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
                "creationTimestamp": meta.get("creationTimestamp", ""),
            },
            "spec": {"replicas": spec.get("replicas", 1)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
            },
        }

    async def _scale(
        self, request: web.Request, rt: ResourceType, obj: Obj, verb: str
    ) -> web.Response:
        scale = self._scale_of(obj)
        if verb == "get":
            return _json_response(scale)
        raw = await self._read_body(request)
        if verb == "update":
            new_scale = self._decode(raw, request.content_type, rt)
        else:
            new_scale = self._patched(
                scale,
                raw,
                request.headers.get("Content-Type", ""),
                ("autoscaling", "Scale"),
                builtin=True,
                strict=_strict(request),
            )
        scale_spec = new_scale.get("spec") or {}
        scale_meta = new_scale.get("metadata") or {}
        if not isinstance(scale_spec, dict) or not isinstance(scale_meta, dict):
            raise BadRequestError("the Scale spec and metadata must be objects")
        replicas = scale_spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise InvalidError(
                "Scale",
                obj["metadata"]["name"],
                [
                    {
                        "reason": "FieldValueInvalid",
                        "message": f'Invalid value: "{replicas}": must be greater than or '
                        "equal to 0",
                        "field": "spec.replicas",
                    }
                ],
                group="autoscaling",
            )
        new = _copy(obj)
        new["spec"]["replicas"] = replicas
        new["metadata"]["resourceVersion"] = (
            scale_meta.get("resourceVersion", "") or obj["metadata"]["resourceVersion"]
        )
        stored = await self._merge_update(request, rt, obj, new, subresource="scale")
        return _json_response(self._scale_of(stored))

    async def _log(self, request: web.Request, pod: Obj) -> web.StreamResponse:
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        name = pod["metadata"]["name"]
        container = request.query.get("container", "")
        if not container:
            if len(containers) != 1:
                raise BadRequestError(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(containers)}]"
                )
            container = containers[0]
        elif container not in containers:
            raise BadRequestError(f"container {container} is not valid for pod {name}")
        image = next(
            (c.get("image", "") for c in pod["spec"]["containers"] if c.get("name") == container),
            "",
        )
        timestamps = _query_bool(request, "timestamps")

        def line(n: int) -> bytes:
            text = (
                f"sandbox: pod {pod['metadata'].get('namespace', '')}/{name} container "
                f"{container} ({image}) log line {n}"
            )
            if timestamps:
                text = f"{objects.now_rfc3339()} {text}"
            return (text + "\n").encode()

        first_lines = [line(n) for n in range(1, 4)]
        tail = request.query.get("tailLines", "")
        if tail.isdigit():
            first_lines = first_lines[-int(tail) :] if int(tail) else []
        if not _query_bool(request, "follow"):
            return web.Response(body=b"".join(first_lines), content_type="text/plain")
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        n = 3
        try:
            for chunk in first_lines:
                await response.write(chunk)
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=LOG_INTERVAL)
                if self.stopping.is_set():
                    break
                if self.store.get("", "pods", pod["metadata"].get("namespace"), name) is None:
                    break
                n += 1
                await response.write(line(n))
        except (ConnectionResetError, ConnectionError):
            logger.debug("log follower of %s went away", name)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # ------------------------------------------------------------------ reviews

    def _review(self, rt: ResourceType, route: Route, body: Obj, user: UserInfo) -> Obj:
        self._check_type(rt, body)
        if rt.resource == "selfsubjectreviews":
            return reviews.create_self_subject_review(user)
        if rt.resource == "tokenreviews":
            return reviews.create_token_review(body, self.authenticator)
        if rt.resource == "selfsubjectaccessreviews":
            return reviews.create_self_subject_access_review(body, user, self.authorizer)
        if rt.resource == "selfsubjectrulesreviews":
            return reviews.create_self_subject_rules_review(body, user, self.authorizer)
        if rt.resource == "localsubjectaccessreviews":
            return reviews.create_local_subject_access_review(
                body, route.namespace, self.authorizer
            )
        if rt.resource == "subjectaccessreviews":
            return reviews.create_subject_access_review(body, self.authorizer)
        raise NotFoundError("the server could not find the requested resource")


# ---------------------------------------------------------------------- serving


_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _load_token(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return token


class Sandbox:
    """The sandbox API server on ``host:port`` (0 = a free port), over HTTPS.

    ``state_dir`` keeps the CA, the admin token and the service-account signing key, so a
    restarted sandbox accepts the kubeconfigs it wrote before (objects are not kept).

    ``http2=True`` puts the HTTP/2 front (sandbox/h2front.py) on ``host:port``: ``url`` is
    then the front, and the sandbox itself listens on a free loopback port behind it.

    ``service_addresses`` maps ``namespace/name`` of an admission webhook's
    ``clientConfig.service`` to the ``host:port`` the sandbox calls instead (no Services run
    here); the certificate is still verified for ``name.namespace.svc``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_file: Path | str | None = None,
        state_dir: Path | str | None = None,
        *,
        history_size: int = 1000,
        http2: bool = False,
        service_addresses: Mapping[str, str] | None = None,
    ) -> None:
        self.service_addresses = dict(service_addresses or {})
        self.host = host
        self.http2 = http2
        self.h2front: H2Front | None = None
        self.port = port
        self.tokens_file = Path(tokens_file) if tokens_file else None
        self.state_dir = Path(state_dir) if state_dir else None
        self.history_size = history_size
        self.url = ""
        self.kubeconfig_path: Path | None = None
        self._runner: web.AppRunner | None = None
        self._server: SandboxServer | None = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.ca = CertificateAuthority.load_or_create(self.state_dir, "klockproxy-sandbox-ca")
            self.admin_token = _load_token(self.state_dir / "admin-token")
        else:
            self.ca = CertificateAuthority.create("klockproxy-sandbox-ca")
            self.admin_token = secrets.token_urlsafe(32)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    @property
    def server(self) -> SandboxServer:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return self._server

    @property
    def store(self) -> Store:
        return self.server.store

    def _signing_key(self) -> bytes | None:
        if self.state_dir is None:
            return None
        path = self.state_dir / "sa-signing.key"
        return path.read_bytes() if path.exists() else None

    def _ssl_context(self, *, client_certs: bool = True) -> ssl.SSLContext:
        hosts = ["127.0.0.1", "localhost", "::1"]
        if self.host not in (*hosts, *_WILDCARD_HOSTS):
            hosts.append(self.host)
        cert_pem, key_pem = self.ca.issue_server(hosts)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="klockproxy-sandbox-") as tmp:
            cert_path = Path(tmp) / "tls.crt"
            key_path = Path(tmp) / "tls.key"
            cert_path.write_bytes(cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, key_pem)
            finally:
                os.close(fd)
            ctx.load_cert_chain(cert_path, key_path)
        if client_certs:
            ctx.load_verify_locations(cadata=self.ca.cert_pem.decode())
            ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self) -> None:
        authenticator = sandbox_auth.Authenticator(
            self.ca, self.tokens_file, signing_key_pem=self._signing_key()
        )
        if self.state_dir is not None:
            key_path = self.state_dir / "sa-signing.key"
            if not key_path.exists():
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.write(fd, authenticator.signing_key_pem)
                finally:
                    os.close(fd)
        authenticator.add_static_token(self.admin_token, ADMIN_USER)
        server = SandboxServer(
            authenticator,
            history_size=self.history_size,
            service_addresses=self.service_addresses,
        )
        authenticator.sa_lookup = lambda ns, name: server.store.get("", "serviceaccounts", ns, name)
        self._server = server
        app = web.Application(client_max_size=MAX_BODY + 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        # Behind the HTTP/2 front, the sandbox itself listens on a free loopback port.
        host, port = ("127.0.0.1", 0) if self.http2 else (self.host, self.port)
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl_context())
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        if self.http2:
            front = H2Front(
                f"https://127.0.0.1:{int(address[1])}",
                self._ssl_context(client_certs=False),
                backend_context(self.ca.cert_pem),
                self.host,
                self.port,
            )
            try:
                await front.start()
            except BaseException:
                await self.stop()
                raise
            self.h2front = front
            self.port = front.port
        else:
            self.port = int(address[1])
        # Clients of a sandbox listening on every interface connect through loopback.
        client_host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        host = f"[{client_host}]" if ":" in client_host else client_host
        self.url = f"https://{host}:{self.port}"
        server.server_address = f"{host}:{self.port}"
        logger.info("sandbox API server listening on %s", self.url)

    async def stop(self) -> None:
        """Stop serving and close every connection, as a kube-apiserver that exits does."""
        ports = {self.port}
        if self.h2front is not None:
            await self.h2front.stop()
            self.h2front = None
        if self._server is not None:
            self._server.stopping.set()
            self._server.store.close_watchers()
        if self._runner is not None:
            ports.update(int(address[1]) for address in self._runner.addresses)
            await self._runner.cleanup()
            self._runner = None
        await _close_accepted(ports)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def known_users(self) -> dict[str, dict[str, Any]]:
        """admin (token) plus every user of the tokens file, by user name."""
        users: dict[str, dict[str, Any]] = {"admin": {"token": self.admin_token}}
        if self.tokens_file is not None:
            for token, info in sandbox_auth.parse_tokens_file(self.tokens_file).items():
                users.setdefault(info.username, {"token": token})
        return users

    def write_kubeconfig(
        self, path: Path | str, users: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Path:
        """A kubeconfig for this sandbox: one context per user (default: the known users),
        current context ``admin`` when present."""
        chosen = dict(users) if users is not None else self.known_users()
        current = "admin" if "admin" in chosen else next(iter(chosen))
        written = write_kubeconfig(
            path, server=self.url, ca_pem=self.ca_pem, users=chosen, current_user=current
        )
        self.kubeconfig_path = written
        return written

    def client_certificate_user(self, name: str, groups: list[str]) -> dict[str, Any]:
        """A kubeconfig user entry authenticating with a client certificate from the CA."""
        cert, key = self.ca.issue_client(name, groups)
        return {"client-certificate-data": cert, "client-key-data": key}


_CLOSE_TURNS = 10


async def _close_accepted(ports: set[int]) -> None:
    """Close what the loop still holds of connections accepted on ``ports``.

    Stopping the servers (aiohttp's cleanup, ``asyncio.Server.close``) ends the connections
    they serve, not those accepted in the same instant whose TLS handshake had not finished:
    nothing tracks those but the loop itself. Left open once the loop stops, such a socket
    keeps a client waiting for a ServerHello for ever, where a kube-apiserver that exits
    closes it. asyncio has no public list of a loop's transports (3.13's
    ``Server.abort_clients`` does not cover handshakes either): the selector loop's own map
    is read, and nothing is done on a loop without one.
    """
    transports = getattr(asyncio.get_running_loop(), "_transports", None)
    if not isinstance(transports, Mapping):
        return
    aborted: set[int] = set()
    # A connection accepted in the servers' last turns gets its transport in a task of its
    # own, a turn or two later: look again until a turn finds none (bounded).
    for _ in range(_CLOSE_TURNS):
        await asyncio.sleep(0)
        left = [
            transport
            for transport in list(transports.values())
            if isinstance(transport, asyncio.Transport)
            and id(transport) not in aborted
            and (sockname := transport.get_extra_info("sockname"))
            and sockname[1] in ports
        ]
        if not left:
            return
        for transport in left:
            aborted.add(id(transport))
            # The socket is closed on the loop's next turn.
            transport.abort()


class SandboxThread(LoopThread[Sandbox]):
    """A Sandbox on its own event loop in a daemon thread (for synchronous tests that call
    kubectl with subprocess)."""

    thread_name = "klockproxy-sandbox"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Sandbox(**kwargs))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sandbox and its loop; no socket it accepted stays open."""
        super().stop(timeout)
        # A connection accepted in the loop's very last turns can outlive the loop in a
        # reference cycle (its transport and protocol), its socket open, until the garbage
        # collector runs: seconds, or minutes on a quiet process. Run it now.
        gc.collect()

    @property
    def sandbox(self) -> Sandbox:
        """The running sandbox."""
        return self.service

    @property
    def url(self) -> str:
        return self.sandbox.url

    @property
    def ca_pem(self) -> bytes:
        return self.sandbox.ca_pem

    @property
    def admin_token(self) -> str:
        return self.sandbox.admin_token

    def write_kubeconfig(
        self, path: Path | str, users: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Path:
        return self.sandbox.write_kubeconfig(path, users)


__all__ = ["DELETED", "Event", "Sandbox", "SandboxServer", "SandboxThread", "parse_path"]
