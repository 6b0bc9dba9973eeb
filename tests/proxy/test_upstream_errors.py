"""The answer that replaces mitmproxy's HTML error page (klockproxy.proxy.upstream_errors)."""

from __future__ import annotations

import json

import pytest

from klockproxy.proxy.upstream_errors import error_response


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/pods/my-pod?watch=true",
        "/apis/apps/v1/namespaces/default/deployments",
        "/apis/klock.rnemet.dev/v1/locks",
    ],
)
def test_resource_requests_get_a_503_status_naming_the_cause(path: str) -> None:
    response = error_response(
        path, 502, "klockproxy: the API server x failed: Certificate verify failed"
    )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    status = json.loads(response.content or b"")
    assert status["kind"] == "Status"
    assert status["reason"] == "ServiceUnavailable"
    assert status["code"] == 503
    assert "Certificate verify failed" in status["message"]


def test_other_codes_of_mitmproxy_are_kept() -> None:
    response = error_response("/api/v1/namespaces/default/pods", 413, "too large")
    assert response.status_code == 413
    assert json.loads(response.content or b"")["reason"] == "RequestEntityTooLarge"


@pytest.mark.parametrize(
    "path", ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1?timeout=32s", "/version",
             "/openapi/v3", "/openapi/v3/api/v1"],
)  # fmt: skip
def test_discovery_requests_get_text_kubectl_prints(path: str) -> None:
    """client-go's discovery client ignores a Status body; it prints a 502's text."""
    response = error_response(path, 502, "klockproxy: the API server x failed: reset")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content == b"klockproxy: the API server x failed: reset"
