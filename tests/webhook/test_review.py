"""AdmissionReview v1 parsing and its mapping to what the judge decides on."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from klockproxy.cli import build_parser
from klockproxy.core.errors import ConfigError
from klockproxy.core.requests import RequestInfo
from klockproxy.core.types import Operation, UserInfo
from klockproxy.webhook.command import settings_from_args
from klockproxy.webhook.review import ReviewError, allow, deny, gather, parse_review, to_bytes
from tests.webhook.support import JONNY, pod, review


def parse(body: dict[str, Any]) -> Any:
    return parse_review(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("operation", "sub", "verb", "judged_as"),
    [
        ("CREATE", "", "create", Operation.CREATE),
        ("UPDATE", "", "update", Operation.UPDATE),
        ("DELETE", "", "delete", Operation.DELETE),
        ("CONNECT", "exec", "connect", Operation.CONNECT),
        ("CONNECT", "portforward", "connect", Operation.CONNECT),
        ("CREATE", "eviction", "create", Operation.DELETE),
        ("UPDATE", "scale", "update", Operation.UPDATE),
        ("UPDATE", "ephemeralcontainers", "update", Operation.UPDATE),
        ("CREATE", "binding", "create", Operation.CREATE),
    ],
)
def test_every_operation_maps_to_the_proxys_classification(
    operation: str, sub: str, verb: str, judged_as: Operation
) -> None:
    obj = pod("my-pod") if operation in ("CREATE", "UPDATE") else None
    old = pod("my-pod") if operation == "UPDATE" else None
    r = parse(review(operation, sub=sub, obj=obj, old=old, dry_run=True))
    info = r.info
    assert info.verb == verb
    assert info.operation is judged_as
    assert (info.group, info.version, info.resource, info.subresource) == ("", "v1", "pods", sub)
    assert (info.namespace, info.name, info.dry_run) == ("shop", "my-pod", True)


def test_user_info_is_the_caller() -> None:
    r = parse(review("DELETE", user={**JONNY, "extra": {"scopes": ["a", "b"]}}))
    assert r.user == UserInfo(
        username="system:serviceaccount:shop:jonny-op",
        uid="5b2e",
        groups=("system:serviceaccounts", "system:serviceaccounts:shop"),
        extra={"scopes": ("a", "b")},
    )


def test_the_callers_resource_names_the_request() -> None:
    body = review("DELETE", resource=("apps", "v1", "deployments"), name="web")
    # matchPolicy: Equivalent sent a request made through another group/version.
    body["request"]["requestResource"] = {
        "group": "extensions",
        "version": "v1beta1",
        "resource": "deployments",
    }
    r = parse(body)
    assert (r.resource.group, r.resource.version) == ("extensions", "v1beta1")


def test_a_namespace_is_in_itself() -> None:
    body = review("DELETE", resource=("", "v1", "namespaces"), kind="Namespace", name="shop")
    body["request"]["namespace"] = ""
    assert parse(body).info.namespace == "shop"


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(ReviewError, match=r"request\.kind is missing"):
        body = review("DELETE")
        del body["request"]["kind"]
        parse(body)
    with pytest.raises(ReviewError, match=r"request\.name is missing for a CONNECT"):
        parse(review("CONNECT", sub="exec", name=""))
    with pytest.raises(ReviewError, match="larger than"):
        parse_review(b" " * (3 * 1024 * 1024 + 1))


def test_answers() -> None:
    assert json.loads(to_bytes(allow("u1"))) == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u1", "allowed": True},
    }
    assert deny("u2", 403, "Forbidden", "no")["response"] == {
        "uid": "u2",
        "allowed": False,
        "status": {"code": 403, "reason": "Forbidden", "message": "no"},
    }


async def test_gather_reads_the_parent_only_when_the_review_lacks_it() -> None:
    reads: list[str] = []
    parent = pod("my-pod", {"aura": "red"})

    async def read(info: RequestInfo) -> dict[str, Any]:
        reads.append(f"{info.resource}/{info.name}")
        return parent

    update = parse(review("UPDATE", old=pod("my-pod", {"a": "1"}), obj=pod("my-pod", {"a": "2"})))
    subject = await gather(update, read)
    assert (subject.old, subject.new) == (update.old_object, update.object)
    assert reads == []

    evict = parse(review("CREATE", sub="eviction", kind="Eviction", obj={"kind": "Eviction"}))
    subject = await gather(evict, read)
    assert (subject.old, subject.new) == (parent, None)

    scale = parse(review("UPDATE", sub="scale", kind="Scale", obj={}, old={}))
    subject = await gather(scale, read)
    assert (subject.old, subject.new) == (parent, parent)
    assert reads == ["pods/my-pod", "pods/my-pod"]


# ------------------------------------------------------------------ the command line


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["webhook", *argv])


def test_the_synopsis_parses() -> None:
    s = settings_from_args(
        args(
            "--kubeconfig",
            "kc",
            "--context",
            "admin",
            "--listen",
            "127.0.0.1:9443",
            "--cert-secret",
            "klockproxy/tls",
            "--webhook-config",
            "klockproxy",
            "--locks",
            "cluster",
            "locks/",
            "--health-listen",
            "127.0.0.1:8080",
            "--audit-log",
            "-",
        )
    )
    assert (s.kubeconfig, s.context, s.listen) == ("kc", "admin", "127.0.0.1:9443")
    assert (s.cert_secret, s.webhook_config) == ("klockproxy/tls", "klockproxy")
    assert tuple(s.locks) == ("cluster", "locks/")
    assert (s.health_listen, s.audit_log) == ("127.0.0.1:8080", "-")
    files = settings_from_args(args("--tls-cert", "c", "--tls-key", "k"))
    assert (files.tls_cert, files.tls_key, tuple(files.locks)) == ("c", "k", ("cluster",))
    assert files.listen == "0.0.0.0:9443"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "give --tls-cert/--tls-key or --cert-secret"),
        (("--tls-cert", "c"), "go together"),
        (("--tls-cert", "c", "--tls-key", "k", "--cert-secret", "a/b"), "not both"),
        (("--cert-secret", "nons"), "NAMESPACE/NAME"),
        (("--tls-cert", "c", "--tls-key", "k", "--webhook-config", "x"), "cert-manager"),
        (("--cert-secret", "a/b", "--listen", "nowhere"), "HOST:PORT"),
    ],
)
def test_contradictions_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_args(args(*argv))
