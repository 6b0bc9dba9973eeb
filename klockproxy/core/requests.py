"""Classify an API request from its method and raw path, the way the API server does.

This follows ``k8s.io/apiserver``'s ``RequestInfoFactory``: ``/api/<version>/...`` (the core
group ``""``) and ``/apis/<group>/<version>/...`` are resource requests; anything else
(``/version``, ``/api``, ``/apis/<group>``, ``/openapi/v3``, ``/healthz``...) is not, and
then ``verb`` is the lower-cased HTTP method (``get``, ``post``...), as RBAC's
``nonResourceURLs`` rules see it.

Decisions where the API server leaves room (documented, deliberate):

* The proxy must see the same object the API server will act on, so anything that the API
  server would decode into a different routing raises ``ClassificationError`` instead of
  being guessed at: a percent-encoded ``/`` (``%2F``) or NUL, ``.`` and ``..`` segments,
  empty segments (``//``, a trailing ``/``), invalid percent escapes or non-UTF-8 escapes,
  segments beyond ``<resource>/<name>/<subresource>`` (except under a ``proxy``
  subresource, whose remainder is the proxied path), the legacy ``/proxy/`` verb prefix, and
  methods the resource endpoints do not serve. Other escapes (``%3A``) are decoded.
* ``HEAD`` is classified like ``GET`` (as the API server does). ``OPTIONS`` is only accepted
  on ``proxy`` subresources (a CONNECT) and on non-resource paths.
* ``exec``, ``attach``, ``portforward`` (GET or POST) and ``proxy`` (any method) are verb
  ``connect`` (the API server's RBAC sees ``create``/``get`` there, admission CONNECT).
  For ``proxy`` the name's ``scheme:`` prefix and ``:port`` suffix are dropped from ``name``
  so that it names the parent object.
* ``watch`` as in ``ListOptions``: any ``watch`` value but ``0``/``false`` means watch;
  ``dry_run`` is true when ``dryRun=All``.
* Admission operations on the PARENT object: create -> CREATE, except ``pods/eviction`` ->
  DELETE (an eviction deletes the pod); a create on another subresource (``serviceaccounts/
  token``, ``pods/binding``) stays CREATE as in Kubernetes admission; update/patch (also of
  ``scale``, ``status``, ``ephemeralcontainers``) -> UPDATE; delete/deletecollection ->
  DELETE; connect -> CONNECT; reads -> None.
* A namespace object's own requests (``/api/v1/namespaces/<name>[/status|/finalize]``)
  have ``namespace == name``, as the API server (and so Klock's webhook) sees them.

The message grammar (``check_method``, ``check_target``, ``check_header_fields``) is checked
before any of this, for every request, reads included: a method that is an RFC 9110 token; an
RFC 9112 origin-form target (``/`` path of pchar and percent escapes, an optional ``?query``;
no fragment ``#``, backslash, space, control byte or non-ASCII character); header names
that are tokens and values without control bytes other than HTAB. What breaks it is a
``MalformedRequestError``: each hop could read such a message differently (CR/LF copied from
an HTTP/2 field into an HTTP/1.1 request smuggle a second request; a server drops ``#...``
as a fragment and acts on another object than the one judged).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from klockproxy.core.errors import ClassificationError, MalformedRequestError
from klockproxy.core.types import Operation, ResourceRef

READ_VERBS = frozenset({"get", "list", "watch"})
MUTATING_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection", "connect"})
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS: Mapping[str, str] = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_PROXY_METHODS = frozenset({*_METHOD_VERBS, "OPTIONS"})
_NON_RESOURCE_METHODS = frozenset({*_METHOD_VERBS, "OPTIONS"})
_HEX = frozenset("0123456789abcdefABCDEF")

# RFC 9110 token (methods, header names) and field-value (no CTL but HTAB; obs-text allowed).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_BYTES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 origin-form: absolute-path [ "?" query ], of RFC 3986 pchar (unreserved,
# sub-delims, ":", "@", percent escapes), "/" and (in the query) "?".
_TARGET_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%/?")
_ORIGIN_FORM = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _describe_char(char: str) -> str:
    if char == "#":
        return "a '#' (a fragment is never part of a request target)"
    if char == " ":
        return "a space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        named = {"\x00": "NUL ", "\r": "CR ", "\n": "LF ", "\t": "TAB "}.get(char, "")
        return f"a {named}control character (0x{ord(char):02x})"
    if ord(char) > 0x7F:
        return "a non-ASCII character"
    return f"{char!r}"


def check_method(method: str) -> None:
    """MalformedRequestError unless ``method`` is an HTTP token (RFC 9110)."""
    if not _TOKEN.fullmatch(method):
        # Never echo it: a smuggled request (with its credentials) may be in there.
        raise MalformedRequestError("the request method is not an HTTP token")


def check_target(target: str) -> None:
    """MalformedRequestError unless ``target`` is an origin-form request target (RFC 9112).

    The error names the first offending character and its offset, never the target itself.
    """
    if _ORIGIN_FORM.fullmatch(target):
        if (bad := _BAD_ESCAPE.search(target)) is not None:
            raise MalformedRequestError(
                f"the request target has an invalid percent escape at offset {bad.start()}"
            )
        return
    if not target.startswith("/"):
        raise MalformedRequestError("the request target does not start with '/' (origin-form)")
    offset, char = next((i, c) for i, c in enumerate(target) if c not in _TARGET_CHARS)
    raise MalformedRequestError(
        f"the request target contains {_describe_char(char)} at offset {offset}"
    )


def check_header_fields(fields: Iterable[tuple[bytes, bytes]]) -> None:
    """MalformedRequestError when a header name is not a token or a value has a control byte
    (CR, LF, NUL... anything below 0x20 but HTAB, and DEL). Names and values are not echoed."""
    for index, (name, value) in enumerate(fields):
        if not _TOKEN_BYTES.fullmatch(name):
            raise MalformedRequestError(f"header field {index} has a name that is not a token")
        if (bad := _BAD_VALUE_BYTE.search(value)) is not None:
            raise MalformedRequestError(
                f"the value of header {_header_name(name)} contains a control byte "
                f"(0x{value[bad.start()]:02x})"
            )


def _header_name(name: bytes) -> str:
    # Only called for names that are tokens (printable ASCII).
    return name.decode("ascii")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request does, as the API server's RequestInfo describes it (see module doc)."""

    verb: str
    is_resource_request: bool
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    dry_run: bool = False
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    path: str = ""
    # The path names its namespace (``.../namespaces/NS/<resource>...``); a namespace's own
    # paths (``/api/v1/namespaces/NS[/status]``) have ``namespace`` set but are not scoped.
    scoped: bool = False
    # False for a subresource the kind does not have (klockproxy.core.routes): the API server
    # answers 404, so there is no admission operation to judge.
    served: bool = True

    @property
    def ref(self) -> ResourceRef:
        """The resource (with subresource) this request addresses."""
        return ResourceRef(self.group, self.version, self.resource, self.subresource)

    @property
    def is_mutation(self) -> bool:
        """True for create, update, patch, delete, deletecollection and connect."""
        return self.is_resource_request and self.verb in MUTATING_VERBS

    @property
    def operation(self) -> Operation | None:
        """The admission operation on the PARENT object, or None for reads (and for requests
        the API server answers 404 to without admission, ``served=False``)."""
        if not self.is_resource_request or not self.served:
            return None
        verb = self.verb
        if verb == "create":
            if self.subresource == "eviction":
                return Operation.DELETE
            return Operation.CREATE
        if verb in ("update", "patch"):
            return Operation.UPDATE
        if verb in ("delete", "deletecollection"):
            return Operation.DELETE
        if verb == "connect":
            return Operation.CONNECT
        return None


def _unescape(text: str, what: str, *, plus_is_space: bool = False) -> str:
    """Percent-decode ``text`` (UTF-8); ClassificationError on a malformed escape."""
    if plus_is_space and "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        j = text.find("%", i)
        if j < 0:
            out += text[i:].encode()
            break
        out += text[i:j].encode()
        if j + 2 >= n:
            raise ClassificationError(f"invalid percent escape at the end of {what} {text!r}")
        hi, lo = text[j + 1], text[j + 2]
        if hi not in _HEX or lo not in _HEX:
            raise ClassificationError(f"invalid percent escape {text[j : j + 3]!r} in {what}")
        out.append(int(hi + lo, 16))
        i = j + 3
    try:
        return out.decode()
    except UnicodeDecodeError as e:
        raise ClassificationError(f"percent escapes in {what} {text!r} are not UTF-8") from e


def _segments(raw: str) -> list[str]:
    """Split and decode a raw path into segments, refusing what would change routing."""
    if not raw.startswith("/"):
        raise ClassificationError(f"request path {raw!r} does not start with '/'")
    if raw == "/":
        return []
    if "\x00" in raw:
        raise ClassificationError("request path contains a NUL character")
    out = []
    for segment in raw[1:].split("/"):
        if not segment:
            raise ClassificationError(f"request path {raw!r} has an empty segment")
        decoded = _unescape(segment, "path segment") if "%" in segment else segment
        if "/" in decoded:
            raise ClassificationError(
                f"path segment {segment!r} encodes a '/' (%2F), which the API server would "
                "route differently"
            )
        if "\x00" in decoded:
            raise ClassificationError(f"path segment {segment!r} encodes a NUL character")
        if decoded in (".", ".."):
            raise ClassificationError(f"request path {raw!r} has a {decoded!r} segment")
        out.append(decoded)
    return out


def parse_query(raw_query: str) -> dict[str, tuple[str, ...]]:
    """Decode a query string (``a=1&b=2&a=3``) into ``{name: (values...)}`` in order."""
    collected: dict[str, list[str]] = {}
    if not raw_query:
        return {}
    for pair in raw_query.split("&"):
        if not pair:
            continue
        if ";" in pair:
            # Go's url.ParseQuery refuses semicolons: the server would not see this pair.
            raise ClassificationError(f"query parameter {pair!r} contains a ';'")
        key, _, value = pair.partition("=")
        name = _unescape(key, "query parameter", plus_is_space=True)
        collected.setdefault(name, []).append(_unescape(value, "query value", plus_is_space=True))
    return {k: tuple(v) for k, v in collected.items()}


def _non_resource(method: str, path: str, query: dict[str, tuple[str, ...]]) -> RequestInfo:
    if method not in _NON_RESOURCE_METHODS:
        raise ClassificationError(f"unsupported HTTP method {method!r}")
    return RequestInfo(verb=method.lower(), is_resource_request=False, query=query, path=path)


def _name_from_field_selector(query: Mapping[str, tuple[str, ...]]) -> str:
    """``fieldSelector=metadata.name=x`` names the object of a list (as RBAC sees it)."""
    values = query.get("fieldSelector")
    if not values or "\\" in values[0]:
        return ""
    for requirement in values[0].split(","):
        field_name, op, value = requirement.partition("=")
        if op and field_name.strip() == "metadata.name" and not field_name.endswith("!"):
            value = value.removeprefix("=").strip()
            if value and value not in (".", "..") and "/" not in value and "%" not in value:
                return value
    return ""


def _proxy_target_name(name: str) -> str:
    """``https:pod:8443`` / ``pod:80`` / ``pod`` -> ``pod`` (net.SplitSchemeNamePort)."""
    parts = name.split(":")
    if len(parts) == 3:
        return parts[1]
    return parts[0]


def classify(method: str, raw_path: str) -> RequestInfo:
    """Classify a request from its HTTP method and raw path (with the query).

    Raises ``ClassificationError`` for a path the API server would not route cleanly or a
    method its resource endpoints do not serve (see the module docstring).
    """
    check_target(raw_path)
    raw, _, raw_query = raw_path.partition("?")
    query = parse_query(raw_query)
    parts = _segments(raw)
    path = "/" + "/".join(parts)

    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return _non_resource(method, path, query)
    if parts[0] == "api":
        group = ""
        rest = parts[1:]
    else:
        if len(parts) < 4:
            return _non_resource(method, path, query)
        group = parts[1]
        rest = parts[2:]
    version = rest[0]
    rest = rest[1:]

    verb = _METHOD_VERBS.get(method, "")
    if rest[0] == "watch":
        # The legacy /watch/ prefix; only reads may use it.
        if method not in ("GET", "HEAD"):
            raise ClassificationError(f"{method} is not allowed on a /watch/ path")
        if len(rest) < 2:
            raise ClassificationError(f"unable to determine kind and namespace from {path!r}")
        verb = "watch"
        rest = rest[1:]
    elif rest[0] == "proxy":
        raise ClassificationError(f"the legacy /proxy/ path prefix is not served ({path!r})")

    namespace = ""
    scoped = False
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
            scoped = True

    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource in CONNECT_SUBRESOURCES:
        if verb == "watch":
            raise ClassificationError(f"cannot watch the {subresource} subresource ({path!r})")
        if subresource == "proxy":
            # The remainder of the path is the proxied path: any segments, any method.
            if method not in _PROXY_METHODS:
                raise ClassificationError(f"unsupported HTTP method {method!r} on {path!r}")
            name = _proxy_target_name(name)
        elif len(rest) > 3:
            raise ClassificationError(f"unexpected segments after {subresource} in {path!r}")
        elif method not in ("GET", "POST"):
            # exec/attach/portforward: GET (websocket upgrade) or POST (SPDY upgrade) only.
            raise ClassificationError(f"{subresource} takes GET or POST, not {method}")
        verb = "connect"
    elif len(rest) > 3:
        raise ClassificationError(f"unexpected segments after the subresource in {path!r}")
    if not verb:
        raise ClassificationError(f"unsupported HTTP method {method!r} on {path!r}")

    if verb == "get" and not name:
        watch = query.get("watch")
        verb = "watch" if watch and watch[0].lower() not in ("0", "false") else "list"
        name = _name_from_field_selector(query)
    elif verb == "delete" and not name:
        verb = "deletecollection"

    return RequestInfo(
        verb=verb,
        is_resource_request=True,
        group=group,
        version=version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        dry_run="All" in query.get("dryRun", ()),
        query=query,
        path=path,
        scoped=scoped,
    )
