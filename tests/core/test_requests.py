"""Request classification, compared with what the API server's RequestInfoFactory does."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.core.errors import ClassificationError, MalformedRequestError
from klockproxy.core.requests import (
    RequestInfo,
    check_header_fields,
    check_method,
    check_target,
    classify,
    parse_query,
)
from klockproxy.core.types import Operation, ResourceRef


def shape(info: RequestInfo) -> tuple[str, str, str, str, str, str, str]:
    return (
        info.verb,
        info.group,
        info.version,
        info.resource,
        info.subresource,
        info.namespace,
        info.name,
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # Mirrors the API server's own TestGetAPIRequestInfo table.
        ("GET", "/api/v1/namespaces", ("list", "", "v1", "namespaces", "", "", "")),
        ("GET", "/api/v1/namespaces/other", ("get", "", "v1", "namespaces", "", "other", "other")),
        ("GET", "/api/v1/namespaces/other/pods", ("list", "", "v1", "pods", "", "other", "")),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo",
            (
                "get",
                "",
                "v1",
                "pods",
                "",
                "other",
                "foo",
            ),
        ),
        (
            "HEAD",
            "/api/v1/namespaces/other/pods/foo",
            ("get", "", "v1", "pods", "", "other", "foo"),
        ),
        ("GET", "/api/v1/pods", ("list", "", "v1", "pods", "", "", "")),
        ("HEAD", "/api/v1/pods", ("list", "", "v1", "pods", "", "", "")),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo",
            (
                "get",
                "",
                "v1",
                "pods",
                "",
                "other",
                "foo",
            ),
        ),
        ("GET", "/api/v1/namespaces/other/pods", ("list", "", "v1", "pods", "", "other", "")),
        # Legacy watch prefix.
        ("GET", "/api/v1/watch/pods", ("watch", "", "v1", "pods", "", "", "")),
        ("GET", "/api/v1/watch/namespaces/o/pods", ("watch", "", "v1", "pods", "", "o", "")),
        ("GET", "/api/v1/watch/namespaces/o/pods/x", ("watch", "", "v1", "pods", "", "o", "x")),
        ("GET", "/api/v1/namespaces/o/pods?watch=true", ("watch", "", "v1", "pods", "", "o", "")),
        ("GET", "/api/v1/namespaces/o/pods?watch=1", ("watch", "", "v1", "pods", "", "o", "")),
        ("GET", "/api/v1/namespaces/o/pods?watch=", ("watch", "", "v1", "pods", "", "o", "")),
        ("GET", "/api/v1/namespaces/o/pods?watch=false", ("list", "", "v1", "pods", "", "o", "")),
        ("GET", "/api/v1/namespaces/o/pods?watch=0", ("list", "", "v1", "pods", "", "o", "")),
        # Groups.
        (
            "GET",
            "/apis/apps/v1/namespaces/o/deployments/d",
            ("get", "apps", "v1", "deployments", "", "o", "d"),
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/o/deployments/d/scale",
            ("patch", "apps", "v1", "deployments", "scale", "o", "d"),
        ),
        (
            "GET",
            "/apis/klock.rnemet.dev/v1/locks",
            ("list", "klock.rnemet.dev", "v1", "locks", "", "", ""),
        ),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            ("create", "authentication.k8s.io", "v1", "selfsubjectreviews", "", "", ""),
        ),
        (
            "PUT",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aadmin",
            ("update", "rbac.authorization.k8s.io", "v1", "clusterroles", "", "", "system:admin"),
        ),
        # Mutations.
        ("POST", "/api/v1/namespaces/o/pods", ("create", "", "v1", "pods", "", "o", "")),
        ("PUT", "/api/v1/namespaces/o/pods/x", ("update", "", "v1", "pods", "", "o", "x")),
        ("PATCH", "/api/v1/namespaces/o/pods/x", ("patch", "", "v1", "pods", "", "o", "x")),
        ("DELETE", "/api/v1/namespaces/o/pods/x", ("delete", "", "v1", "pods", "", "o", "x")),
        (
            "DELETE",
            "/api/v1/namespaces/o/pods",
            ("deletecollection", "", "v1", "pods", "", "o", ""),
        ),
        ("DELETE", "/api/v1/namespaces/x", ("delete", "", "v1", "namespaces", "", "x", "x")),
        (
            "PUT",
            "/api/v1/namespaces/x/finalize",
            ("update", "", "v1", "namespaces", "finalize", "x", "x"),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/x/status",
            ("patch", "", "v1", "namespaces", "status", "x", "x"),
        ),
        (
            "PUT",
            "/api/v1/namespaces/o/pods/x/status",
            ("update", "", "v1", "pods", "status", "o", "x"),
        ),
        (
            "POST",
            "/api/v1/namespaces/o/pods/x/eviction",
            ("create", "", "v1", "pods", "eviction", "o", "x"),
        ),
        (
            "POST",
            "/api/v1/namespaces/o/serviceaccounts/sa/token",
            ("create", "", "v1", "serviceaccounts", "token", "o", "sa"),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/o/pods/x/ephemeralcontainers",
            ("patch", "", "v1", "pods", "ephemeralcontainers", "o", "x"),
        ),
        ("GET", "/api/v1/namespaces/o/pods/x/log", ("get", "", "v1", "pods", "log", "o", "x")),
        # Connect subresources.
        (
            "GET",
            "/api/v1/namespaces/o/pods/x/exec?command=sh&stdin=true",
            ("connect", "", "v1", "pods", "exec", "o", "x"),
        ),
        (
            "POST",
            "/api/v1/namespaces/o/pods/x/attach",
            ("connect", "", "v1", "pods", "attach", "o", "x"),
        ),
        (
            "POST",
            "/api/v1/namespaces/o/pods/x/portforward",
            ("connect", "", "v1", "pods", "portforward", "o", "x"),
        ),
        (
            "PUT",
            "/api/v1/namespaces/o/pods/https:x:8443/proxy/some/path",
            ("connect", "", "v1", "pods", "proxy", "o", "x"),
        ),
        (
            "OPTIONS",
            "/api/v1/namespaces/o/services/svc:80/proxy",
            ("connect", "", "v1", "services", "proxy", "o", "svc"),
        ),
        (
            "GET",
            "/api/v1/nodes/n1/proxy/metrics",
            ("connect", "", "v1", "nodes", "proxy", "", "n1"),
        ),
    ],
)
def test_resource_requests(method: str, path: str, expected: tuple[str, ...]) -> None:
    info = classify(method, path)
    assert info.is_resource_request
    assert shape(info) == expected


@pytest.mark.parametrize(
    ("method", "path", "verb"),
    [
        ("GET", "/", "get"),
        ("GET", "/version?timeout=5s", "get"),
        ("GET", "/api", "get"),
        ("GET", "/api/v1", "get"),
        ("GET", "/apis", "get"),
        ("GET", "/apis/apps", "get"),
        ("GET", "/apis/apps/v1", "get"),
        ("GET", "/openapi/v3/api/v1?hash=ABC", "get"),
        ("GET", "/healthz", "get"),
        ("POST", "/logs", "post"),
        ("OPTIONS", "/version", "options"),
    ],
)
def test_non_resource_requests(method: str, path: str, verb: str) -> None:
    info = classify(method, path)
    assert not info.is_resource_request
    assert info.verb == verb
    assert not info.is_mutation
    assert info.operation is None


def test_query_dry_run_and_decoded_path() -> None:
    info = classify(
        "PATCH",
        "/api/v1/namespaces/default/pods/my-pod?dryRun=All&fieldManager=kubectl-label&x=a+b%21",
    )
    assert info.dry_run
    assert info.query["fieldManager"] == ("kubectl-label",)
    assert info.query["x"] == ("a b!",)
    assert info.path == "/api/v1/namespaces/default/pods/my-pod"
    assert not classify("DELETE", "/api/v1/namespaces/d/pods/x?dryRun=None").dry_run
    assert classify("POST", "/api/v1/namespaces/d/pods?dryRun=x&dryRun=All").dry_run
    assert classify("GET", "/api/v1/namespaces/d/pods/a%3Ab").name == "a:b"


def test_field_selector_names_the_listed_object_like_rbac() -> None:
    assert classify("GET", "/api/v1/namespaces/d/pods?fieldSelector=metadata.name%3Dweb").name == (
        "web"
    )
    assert classify("GET", "/api/v1/pods?fieldSelector=a%3Db,metadata.name%3D%3Dweb").name == "web"
    assert classify("GET", "/api/v1/pods?fieldSelector=metadata.name%21%3Dweb").name == ""
    assert classify("GET", "/api/v1/pods?watch=1&fieldSelector=metadata.name=w").verb == "watch"


def test_ref_and_operations() -> None:
    info = classify("PATCH", "/apis/apps/v1/namespaces/o/deployments/d/scale")
    assert info.ref == ResourceRef("apps", "v1", "deployments", "scale")
    cases = {
        ("POST", "/api/v1/namespaces/o/pods"): Operation.CREATE,
        ("POST", "/api/v1/namespaces/o/pods/x/eviction"): Operation.DELETE,
        ("POST", "/api/v1/namespaces/o/serviceaccounts/s/token"): Operation.CREATE,
        ("PUT", "/api/v1/namespaces/o/pods/x"): Operation.UPDATE,
        ("PATCH", "/apis/apps/v1/namespaces/o/deployments/d/scale"): Operation.UPDATE,
        ("PUT", "/api/v1/namespaces/o/pods/x/status"): Operation.UPDATE,
        ("PATCH", "/api/v1/namespaces/o/pods/x/ephemeralcontainers"): Operation.UPDATE,
        ("DELETE", "/api/v1/namespaces/o/pods/x"): Operation.DELETE,
        ("DELETE", "/api/v1/namespaces/o/configmaps"): Operation.DELETE,
        ("GET", "/api/v1/namespaces/o/pods/x/exec"): Operation.CONNECT,
        ("POST", "/api/v1/namespaces/o/pods/x/portforward"): Operation.CONNECT,
        ("GET", "/api/v1/namespaces/o/pods/x"): None,
        ("GET", "/api/v1/namespaces/o/pods"): None,
        ("GET", "/api/v1/namespaces/o/pods?watch=true"): None,
        ("GET", "/api/v1/namespaces/o/pods/x/log"): None,
    }
    for (method, path), operation in cases.items():
        info = classify(method, path)
        assert info.operation == operation, (method, path)
        assert info.is_mutation == (operation is not None), (method, path)


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("DELETE", "/api/v1/namespaces/default/pods/a%2Fb", "%2F"),
        ("DELETE", "/api/v1/namespaces/default/pods/a%2fb", "%2F"),
        ("DELETE", "/api/v1/namespaces/default%2Fpods/x", "%2F"),
        ("DELETE", "/api/v1/namespaces/default/pods/../secrets/x", "'..'"),
        ("DELETE", "/api/v1/namespaces/default/pods/%2E%2E", "'..'"),
        ("DELETE", "/api/v1/namespaces/default/pods/.", "'.'"),
        ("DELETE", "/api/v1/namespaces/default//pods/x", "empty segment"),
        ("DELETE", "/api/v1/namespaces/default/pods/x/", "empty segment"),
        ("PATCH", "/api/v1/namespaces/default/pods/x/status/extra", "unexpected segments"),
        ("POST", "/api/v1/namespaces/default/pods/x/exec/more", "unexpected segments"),
        ("DELETE", "/api/v1/namespaces/default/pods/x%zz", "invalid percent escape"),
        ("DELETE", "/api/v1/namespaces/default/pods/x%4", "invalid percent escape"),
        ("DELETE", "/api/v1/namespaces/default/pods/x%", "invalid percent escape"),
        ("DELETE", "/api/v1/namespaces/default/pods/x%ff", "not UTF-8"),
        ("DELETE", "/api/v1/namespaces/default/pods/x\x00", "NUL"),
        ("DELETE", "/api/v1/namespaces/default/pods/x%00", "NUL"),
        ("DELETE", "/api/v1/namespaces/default/pods/x?dryRun=%zz", "invalid percent escape"),
        ("DELETE", "/api/v1/namespaces/default/pods/x?dryRun=All;a=b", "';'"),
        ("TRACE", "/api/v1/namespaces/default/pods/x", "unsupported HTTP method"),
        ("delete", "/api/v1/namespaces/default/pods/x", "unsupported HTTP method"),
        ("OPTIONS", "/api/v1/namespaces/default/pods/x", "unsupported HTTP method"),
        ("TRACE", "/version", "unsupported HTTP method"),
        ("PUT", "/api/v1/namespaces/default/pods/x/exec", "GET or POST"),
        ("DELETE", "/api/v1/watch/namespaces/default/pods/x", "/watch/"),
        ("GET", "/api/v1/watch", "unable to determine"),
        ("GET", "/api/v1/watch/namespaces/d/pods/x/exec", "cannot watch"),
        ("GET", "/api/v1/proxy/namespaces/d/pods/x", "legacy /proxy/"),
        ("GET", "api/v1/pods", "does not start with '/'"),
        ("GET", "https://host/api/v1/pods", "does not start with '/'"),
        ("GET", "//version", "empty segment"),
    ],
)
def test_unroutable_requests_are_refused(method: str, path: str, message: str) -> None:
    with pytest.raises(ClassificationError, match=message.replace("?", r"\?")):
        classify(method, path)


def test_parse_query_keeps_order_and_repeats() -> None:
    assert parse_query("a=1&b&a=2&&c=%20") == {"a": ("1", "2"), "b": ("",), "c": (" ",)}
    assert parse_query("") == {}


segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?"), min_size=0, max_size=8
)


@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO", "get"]),
    st.lists(segment, max_size=9),
    st.text(max_size=12),
)
def test_arbitrary_paths_classify_or_raise_classification_error(
    method: str, segments: list[str], query: str
) -> None:
    raw = "/" + "/".join(["api", "v1", *segments]) + ("?" + query if query else "")
    try:
        info = classify(method, raw)
    except ClassificationError:
        return
    # Whatever was classified has no segment that could re-route on the server.
    assert "//" not in info.path and "/../" not in info.path + "/"
    if info.is_resource_request:
        assert info.resource
        assert "/" not in info.name and "/" not in info.namespace
        assert info.verb in {
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
            "connect",
        }


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=6)),
        max_size=5,
    )
)
def test_parse_query_inverts_urlencode(pairs: list[tuple[str, str]]) -> None:
    expected: dict[str, list[str]] = {}
    for key, value in pairs:
        expected.setdefault(key, []).append(value)
    assert parse_query(urlencode(pairs)) == {k: tuple(v) for k, v in expected.items()}


# ---------------------------------------------------------------------------------------------
# The message grammar (issue 10 items 1 and 2): refused for every method, before routing.


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/api/v1/namespaces/default/pods/my-pod",
        "/api/v1/pods?labelSelector=aura%3Dred&watch=1",
        "/api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&stdin=true",
        "/apis/g/v1/a:b@c!$&'()*+,;=-._~",
        "/x?a=b?c/d:@",
        "/api/v1/namespaces/default/pods/my%2Dpod",
    ],
)
def test_origin_form_targets_are_accepted(target: str) -> None:
    check_target(target)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/api/v1/namespaces/default/pods/my-pod#x", "'#'"),
        ("/api/v1/namespaces/team#/pods/t-red", "'#'"),
        ("/api/v1/namespaces/default/pods?labelSelector=aura%3Dred#/x", "'#'"),
        ("/api/v1/namespaces/default/pods/my-pod HTTP/1.1", "space"),
        ("/api/v1/namespaces/default/pods\tx", "control"),
        ("/api/v1/namespaces/default/pods\r\nHost: x\r\n\r\nPATCH /x", "CR control"),
        ("/api/v1/namespaces/default/pods\nx", "control"),
        ("/api/v1/namespaces/default/pods\x00x", "control"),
        ("/api/v1/namespaces/default/pods\x7f", "control"),
        ("/api/v1/namespaces/default/pods/é", "non-ASCII"),
        ("/api/v1/namespaces/default/pods/\udcff", "non-ASCII"),
        ("/api\\v1/namespaces/default/pods", "'\\\\'"),
        ('/api/v1/namespaces/default/pods/"x"', "'\"'"),
        ("/api/v1/namespaces/default/pods/<x>", "'<'"),
        ("/api/v1/namespaces/default/pods/{x}", "'{'"),
        ("/api/v1/namespaces/default/pods?labelSelector=a|b", "'|'"),
        ("/api/v1/namespaces/default/pods/[x]", "'['"),
        ("/api/v1/namespaces/default/pods/^x`", "'^'"),
        ("/api/v1/namespaces/default/pods/my%zzpod", "percent"),
        ("/api/v1/namespaces/default/pods/my-pod%4", "percent"),
        ("", "'/'"),
        ("*", "'/'"),
        ("api/v1/pods", "'/'"),
        ("https://other.example/api/v1/pods", "'/'"),
    ],
)
def test_targets_outside_the_origin_form_grammar_are_malformed(target: str, reason: str) -> None:
    with pytest.raises(MalformedRequestError, match=re.escape(reason)):
        check_target(target)
    # classify shares the check, for every method.
    with pytest.raises(MalformedRequestError):
        classify("GET", target)


def test_a_malformed_target_is_not_echoed_in_the_error() -> None:
    smuggled = "/x HTTP/1.1\r\nAuthorization: Bearer secret-token\r\n\r\nPATCH /y"
    with pytest.raises(MalformedRequestError) as raised:
        check_target(smuggled)
    assert "secret-token" not in str(raised.value)


@pytest.mark.parametrize("method", ["GET", "delete", "PATCH", "M-SEARCH", "X_Y.Z!"])
def test_methods_that_are_tokens_are_accepted(method: str) -> None:
    check_method(method)


@pytest.mark.parametrize(
    "method",
    ["", "GE T", "GET\x00", "GET /x HTTP/1.1\r\nHost: x\r\n\r\nDELETE", "PATCH\n", "GÉT", "(GET)"],
)
def test_methods_that_are_not_tokens_are_malformed(method: str) -> None:
    with pytest.raises(MalformedRequestError, match="method"):
        check_method(method)


def test_well_formed_header_fields_are_accepted() -> None:
    check_header_fields(
        [
            (b"Content-Type", b"application/json"),
            (b"x-tab", b"a\tb"),
            (b"x-obs-text", b"caf\xc3\xa9 \xff"),
            (b"x-empty", b""),
            (b"!#$%&'*+-.^_`|~09azAZ", b"v"),
        ]
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"x-a", b"b\r\nContent-Length: 0\r\n\r\nPATCH /x HTTP/1.1"),
        (b"x-a", b"b\rc"),
        (b"x-a", b"b\nc"),
        (b"x-a", b"b\x00c"),
        (b"x-a", b"b\x01c"),
        (b"x-a", b"\x7f"),
        (b"x-a: b\r\n\r\nPATCH /x HTTP/1.1\r\nx-b", b"c"),
        (b"x a", b"c"),
        (b"x:a", b"c"),
        (b"x\x00", b"c"),
        (b"", b"c"),
        (b"caf\xc3\xa9", b"c"),
    ],
)
def test_header_fields_with_control_bytes_or_bad_names_are_malformed(
    name: bytes, value: bytes
) -> None:
    with pytest.raises(MalformedRequestError, match="header"):
        check_header_fields([(b"accept", b"*/*"), (name, value)])


# Fuzzing the grammar against an independent model of it (RFC 9112 / RFC 9110).
_MODEL_TARGET_CHARS = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%"
)
_MODEL_TCHARS = set(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _model_target_ok(target: str) -> bool:
    if not target.startswith("/") or any(c not in _MODEL_TARGET_CHARS for c in target):
        return False
    hexdigits = set("0123456789abcdefABCDEF")
    return all(
        len(target[i + 1 : i + 3]) == 2 and set(target[i + 1 : i + 3]) <= hexdigits
        for i, c in enumerate(target)
        if c == "%"
    )


_target_pieces = st.sampled_from(
    ["/", "api", "v1", "pods", "namespaces", "default", "my-pod", "%2F", "%zz", "%4", "%41",
     "#", "#x", "?", "&", "=", " ", "\t", "\r", "\n", "\r\n", "\x00", "\x7f", "\\", "é", "[",
     "|", "\"", "..", ".", ":", "@", "+", "%00", "~", "HTTP/1.1"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        _target_pieces | st.text(st.characters(codec="utf-8"), max_size=4),
        max_size=12,
    )
)
def test_check_target_accepts_exactly_the_origin_form_grammar(pieces: list[str]) -> None:
    target = "".join(pieces)
    try:
        check_target(target)
    except MalformedRequestError as e:
        assert not _model_target_ok(target), target
        assert "\r" not in str(e) and "\n" not in str(e)
        return
    assert _model_target_ok(target), target


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=6) | st.sampled_from([b"x-a", b"Content-Type", b"x a", b"x:a"]),
            st.binary(max_size=8) | st.sampled_from([b"a\r\nb", b"a\tb", b"\xff", b"a b"]),
        ),
        max_size=4,
    )
)
def test_check_header_fields_accepts_exactly_tokens_and_values_without_controls(
    fields: list[tuple[bytes, bytes]],
) -> None:
    def ok(name: bytes, value: bytes) -> bool:
        return (
            bool(name)
            and all(b in _MODEL_TCHARS for b in name)
            and all(b == 0x09 or (b >= 0x20 and b != 0x7F) for b in value)
        )

    expected = all(ok(name, value) for name, value in fields)
    try:
        check_header_fields(fields)
    except MalformedRequestError:
        assert not expected
        return
    assert expected
