"""Request paths as the proxy reads and builds them.

``classify_request`` is ``classify`` plus what the API server routes beyond it: the opaque
tail of a connect subresource, and the kubelet's pod actions reached through
``nodes/NAME/proxy``. ``api_prefix`` / ``collection_path`` / ``object_path`` build the URL
paths the proxy's lookups use, ``resource_path`` those of other objects.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from klockproxy.core.errors import ClassificationError, MalformedRequestError
from klockproxy.core.requests import CONNECT_SUBRESOURCES, RequestInfo, classify
from klockproxy.core.routes import check_route
from klockproxy.core.types import ResourceRef


def api_prefix(info: RequestInfo) -> str:
    """``/api/v1`` or ``/apis/<group>/<version>``."""
    if info.group:
        return f"/apis/{quote(info.group, safe='')}/{quote(info.version, safe='')}"
    return f"/api/{quote(info.version, safe='')}"


def resource_path(ref: ResourceRef, namespace: str = "", name: str = "") -> str:
    """The URL path of a resource's collection (in ``namespace`` when given), or of the
    object ``name`` in it: the paths of objects the proxy looks up besides the request's."""
    if ref.group:
        prefix = f"/apis/{quote(ref.group, safe='')}/{quote(ref.version, safe='')}"
    else:
        prefix = f"/api/{quote(ref.version, safe='')}"
    if namespace:
        prefix += f"/namespaces/{quote(namespace, safe='')}"
    path = f"{prefix}/{quote(ref.resource, safe='')}"
    return f"{path}/{quote(name, safe='')}" if name else path


def collection_path(info: RequestInfo) -> str:
    """The URL path of the collection the request addresses (the parent's, for subresources)."""
    prefix = api_prefix(info)
    resource = quote(info.resource, safe="")
    # A namespace's own paths (``.../namespaces/NS[/status]``, in any group as the API
    # server parses them) carry the namespace without being scoped by it.
    if info.namespace and not (info.resource == "namespaces" and not info.scoped):
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


def _refuse_dot_segments(raw_path: str) -> None:
    """A ``.`` or ``..`` segment (escaped or not) in a proxied path: refused.

    The kubelet cleans the path it is handed (``nodes/N/proxy/x/../exec/NS/POD`` is exec on
    that pod there), and other backends may too; the proxy would have to guess which object
    is reached.
    """
    segments = unquote(raw_path.partition("?")[0]).split("/")
    bad = [part for part in segments if part in (".", "..")]
    if bad:
        raise ClassificationError(
            f"a {bad[0]!r} segment in a proxied path would reach another path than the one judged"
        )


def classify_request(method: str, raw_path: str) -> RequestInfo:
    """``classify``, plus the connect subresources whose tail ``classify`` refuses, and the
    kubelet's pod actions reached through ``nodes/NAME/proxy`` (a CONNECT on that pod).

    Raises ClassificationError when the path has no reading the proxy can judge
    (MalformedRequestError: not even HTTP's grammar; UnservedRouteError: a shape the API
    server does not serve, klockproxy.core.routes). A subresource the kind does not have is
    classified with ``served=False`` (no admission operation).
    """
    try:
        info = classify(method, raw_path)
    except MalformedRequestError:
        raise
    except ClassificationError:
        readings = _connect_prefix_infos(method, raw_path)
        if not readings:
            raise
        info = readings[0]
        if info.subresource == "proxy":
            _refuse_dot_segments(raw_path)
    info = check_route(info)
    return check_route(_kubelet_target(info, raw_path) or info)


def may_be_connect(raw_path: str) -> bool:
    """Whether any path segment names a connect subresource (then it is not a plain read)."""
    # Decode first, then split: the API server routes ``my-pod%2Fexec`` to exec.
    path = unquote(raw_path.partition("?")[0])
    return any(part in CONNECT_SUBRESOURCES for part in path.split("/"))
