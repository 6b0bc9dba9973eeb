"""Validating admission webhooks, called the way kube-apiserver calls them.

The sandbox serves ``admissionregistration.k8s.io/v1`` ValidatingWebhookConfigurations; every
create, update, delete and connect it admits (subresources included) is, after
authentication, authorization and the sandbox's own validation and defaulting and before the
write is stored, sent as an ``admission.k8s.io/v1`` AdmissionReview to each webhook whose
rules, namespaceSelector and objectSelector match. The webhooks are called in parallel; all
must allow. What this module mirrors, and what it leaves out, is listed in docs/sandbox.md.

Wording and status codes follow the API server's webhook dispatcher: a denial becomes
``admission webhook "NAME" denied the request: MESSAGE`` with the webhook's code (403 when it
gives none), a webhook that cannot be called or answers nonsense becomes (failurePolicy Fail)
``Internal error occurred: failed calling webhook "NAME": ...`` with code 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict
from urllib.parse import urlsplit

import aiohttp

from klockproxy.core.errors import KlockProxyError
from klockproxy.core.status import StatusCause, StatusDetails
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.errors import ApiError, InvalidError, NotFoundError
from klockproxy.sandbox.rbac import selector_matches

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

GROUP = "admissionregistration.k8s.io"
VALIDATING = "validatingwebhookconfigurations"
# Requests on these are never sent to webhooks (the API server's
# IsExemptAdmissionConfigurationResource): a broken webhook must not lock itself in.
EXEMPT_RESOURCES = frozenset(
    {
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
    }
)
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
DEFAULT_TIMEOUT = 10
MAX_RESPONSE = 6 * 1024 * 1024
MAX_CONTEXTS = 64
REVIEW_API_VERSION = "admission.k8s.io/v1"


class AdmissionReviewRequest(TypedDict, total=False):
    """``AdmissionReview.request`` as the API server sends it (v1)."""

    uid: str
    kind: dict[str, str]
    resource: dict[str, str]
    subResource: str
    requestKind: dict[str, str]
    requestResource: dict[str, str]
    requestSubResource: str
    name: str
    namespace: str
    operation: str
    userInfo: dict[str, Any]
    object: Obj | None
    oldObject: Obj | None
    dryRun: bool
    options: Obj | None


# ---------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Attributes:
    """One admitted operation: what the API server's admission.Attributes carry."""

    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    group: str
    version: str
    resource: str
    subresource: str
    kind_group: str
    kind_version: str
    kind: str
    namespace: str
    name: str
    user: UserInfo
    obj: Obj | None = None
    old: Obj | None = None
    dry_run: bool = False
    options: Obj | None = None

    @property
    def group_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def operation_options(kind: str, *, dry_run: bool, field_manager: str = "", **extra: Any) -> Obj:
    """CreateOptions / UpdateOptions / PatchOptions / DeleteOptions as the API server puts
    them in ``request.options`` (meta.k8s.io/v1, empty fields left out)."""
    opts: Obj = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
    if dry_run:
        opts["dryRun"] = ["All"]
    if field_manager:
        opts["fieldManager"] = field_manager
    opts.update({k: v for k, v in extra.items() if v not in (None, "", [], {})})
    return opts


def _user_info(user: UserInfo) -> dict[str, Any]:
    info: dict[str, Any] = {"username": user.username}
    if user.uid:
        info["uid"] = user.uid
    if user.groups:
        info["groups"] = list(user.groups)
    if user.extra:
        info["extra"] = {k: list(v) for k, v in user.extra.items()}
    return info


def _gvk(attrs: Attributes) -> dict[str, str]:
    return {"group": attrs.kind_group, "version": attrs.kind_version, "kind": attrs.kind}


def _gvr(attrs: Attributes) -> dict[str, str]:
    return {"group": attrs.group, "version": attrs.version, "resource": attrs.resource}


def review_request(
    attrs: Attributes, uid: str, requested: Attributes | None = None
) -> AdmissionReviewRequest:
    """The ``request`` of the AdmissionReview sent for ``attrs``; ``requested`` is the
    request as made when ``attrs`` is its conversion to the version a webhook's rule names
    (matchPolicy Equivalent): it gives ``requestKind`` and ``requestResource``."""
    asked = requested or attrs
    req: AdmissionReviewRequest = {
        "uid": uid,
        "kind": _gvk(attrs),
        "resource": _gvr(attrs),
        "requestKind": _gvk(asked),
        "requestResource": _gvr(asked),
    }
    if attrs.subresource:
        req["subResource"] = attrs.subresource
        req["requestSubResource"] = asked.subresource
    if attrs.name:
        req["name"] = attrs.name
    if attrs.namespace:
        req["namespace"] = attrs.namespace
    req["operation"] = attrs.operation
    req["userInfo"] = _user_info(attrs.user)
    req["object"] = attrs.obj
    req["oldObject"] = attrs.old
    req["dryRun"] = attrs.dry_run
    req["options"] = attrs.options
    return req


# ---------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Rule:
    operations: tuple[str, ...]
    api_groups: tuple[str, ...]
    api_versions: tuple[str, ...]
    resources: tuple[str, ...]
    scope: str = "*"

    def matches(self, attrs: Attributes) -> bool:
        """The API server's rules.Matcher: scope, operation, group, version, resource."""
        is_namespace = attrs.group == "" and attrs.resource == "namespaces"
        if self.scope == "Namespaced" and (is_namespace or not attrs.namespace):
            return False
        if self.scope == "Cluster" and not (is_namespace or not attrs.namespace):
            return False
        if not _exact_or_wildcard(self.operations, attrs.operation):
            return False
        if not _exact_or_wildcard(self.api_groups, attrs.group):
            return False
        if not _exact_or_wildcard(self.api_versions, attrs.version):
            return False
        for item in self.resources:
            res, _, sub = item.partition("/")
            if res in ("*", attrs.resource) and sub in ("*", attrs.subresource):
                return True
        return False


def _exact_or_wildcard(items: Sequence[str], requested: str) -> bool:
    return "*" in items or requested in items


@dataclass(frozen=True)
class Webhook:
    """One webhook of a stored ValidatingWebhookConfiguration (defaults applied)."""

    name: str
    configuration: str
    rules: tuple[Rule, ...]
    failure_policy: str
    match_policy: str
    namespace_selector: Mapping[str, Any]
    object_selector: Mapping[str, Any]
    timeout_seconds: int
    url: str = ""
    service: Mapping[str, Any] = field(default_factory=dict)
    ca_bundle: bytes = b""

    @classmethod
    def from_config(cls, config: Obj) -> list[Webhook]:
        out: list[Webhook] = []
        cname = str(config["metadata"]["name"])
        for hook in config.get("webhooks") or []:
            client = hook.get("clientConfig") or {}
            rules = tuple(
                Rule(
                    tuple(r.get("operations") or ()),
                    tuple(r.get("apiGroups") or ()),
                    tuple(r.get("apiVersions") or ()),
                    tuple(r.get("resources") or ()),
                    str(r.get("scope") or "*"),
                )
                for r in hook.get("rules") or []
            )
            ca = client.get("caBundle") or ""
            out.append(
                cls(
                    name=str(hook["name"]),
                    configuration=cname,
                    rules=rules,
                    failure_policy=str(hook.get("failurePolicy") or "Fail"),
                    match_policy=str(hook.get("matchPolicy") or "Equivalent"),
                    namespace_selector=hook.get("namespaceSelector") or {},
                    object_selector=hook.get("objectSelector") or {},
                    timeout_seconds=int(hook.get("timeoutSeconds") or DEFAULT_TIMEOUT),
                    url=str(client.get("url") or ""),
                    service=client.get("service") or {},
                    # Validated as base64 when stored.
                    ca_bundle=base64.b64decode(ca) if ca else b"",
                )
            )
        return out


def _invalid(path: str, value: Any, message: str) -> StatusCause:
    shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return {
        "reason": "FieldValueInvalid",
        "message": f"Invalid value: {shown}: {message}",
        "field": path,
    }


def _required(path: str, message: str = "") -> StatusCause:
    text = "Required value" + (f": {message}" if message else "")
    return {"reason": "FieldValueRequired", "message": text, "field": path}


def _unsupported(path: str, value: Any, supported: Sequence[str]) -> StatusCause:
    values = ", ".join(f'"{s}"' for s in supported)
    return {
        "reason": "FieldValueNotSupported",
        "message": f'Unsupported value: "{value}": supported values: {values}',
        "field": path,
    }


_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_SUBDOMAIN.fullmatch(name))


def _string_list_causes(path: str, values: Any, *, what: str) -> list[StatusCause]:
    if not isinstance(values, list) or not values:
        return [_required(path)]
    causes: list[StatusCause] = []
    if any(not isinstance(v, str) for v in values):
        return [_invalid(path, values, f"must be a list of {what}")]
    if "*" in values and len(values) > 1:
        causes.append(_invalid(path, values, "if '*' is present, must not specify other " + what))
    if "" in values and what != "API groups":
        causes.append(_required(path, "must be non-empty"))
    return causes


def _resource_causes(path: str, resources: Any) -> list[StatusCause]:
    causes = _string_list_causes(path, resources, what="resources")
    if causes:
        return causes
    subs_of: dict[str, set[str]] = {}
    for i, item in enumerate(resources):
        res, slash, sub = item.partition("/")
        if not res or (slash and not sub):
            causes.append(_required(f"{path}[{i}]", "resource and subresource must be non-empty"))
            continue
        subs_of.setdefault(res, set()).add(sub)
    if "*/*" in resources and len(resources) > 1:
        causes.append(
            _invalid(path, resources, "if '*/*' is present, must not specify other resources")
        )
    elif "*" in resources:
        others = [r for r in resources if r != "*" and "/" not in r]
        if others:
            causes.append(
                _invalid(
                    path,
                    resources,
                    "if '*' is present, must not specify other resources without subresources",
                )
            )
    # A wildcard subresource or resource covers the specific entries it would match.
    for i, item in enumerate(resources):
        res, slash, sub = item.partition("/")
        if not slash:
            continue
        if sub != "*" and "*" in subs_of.get(res, set()):
            causes.append(
                _invalid(f"{path}[{i}]", item, f"if '{res}/*' is present, must not specify {item}")
            )
        if res != "*" and sub in subs_of.get("*", set()):
            causes.append(
                _invalid(f"{path}[{i}]", item, f"if '*/{sub}' is present, must not specify {item}")
            )
    return causes


def _selector_causes(path: str, selector: Any) -> list[StatusCause]:
    if selector is None:
        return []
    if not isinstance(selector, dict):
        return [_invalid(path, selector, "must be a label selector")]
    causes: list[StatusCause] = []
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, dict) or any(not isinstance(v, str) for v in labels.values()):
        causes.append(_invalid(f"{path}.matchLabels", labels, "must be a map of strings"))
    exprs = selector.get("matchExpressions") or []
    if not isinstance(exprs, list):
        return [*causes, _invalid(f"{path}.matchExpressions", exprs, "must be a list")]
    for i, e in enumerate(exprs):
        epath = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("key"), str) or not e.get("key"):
            causes.append(_required(f"{epath}.key"))
            continue
        op = e.get("operator")
        values = e.get("values") or []
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            causes.append(_invalid(f"{epath}.operator", op, "not a valid selector operator"))
        elif op in ("In", "NotIn") and not values:
            causes.append(
                _required(f"{epath}.values", "must be specified when `operator` is 'In' or 'NotIn'")
            )
        elif op in ("Exists", "DoesNotExist") and values:
            causes.append(
                {
                    "reason": "FieldValueForbidden",
                    "message": "Forbidden: may not be specified when `operator` is 'Exists' or "
                    "'DoesNotExist'",
                    "field": f"{epath}.values",
                }
            )
    return causes


def _client_config_causes(path: str, client: Any) -> list[StatusCause]:
    if not isinstance(client, dict):
        return [_required(path)]
    causes: list[StatusCause] = []
    url, service = client.get("url"), client.get("service")
    if (url is None) == (service is None):
        causes.append(_required(path, "exactly one of url or service is required"))
    if url is not None:
        parts = urlsplit(str(url))
        if parts.scheme != "https":
            causes.append(_invalid(f"{path}.url", url, "'https' is the only allowed URL scheme"))
        if not parts.hostname:
            causes.append(_invalid(f"{path}.url", url, "host must be specified"))
        if parts.username or parts.password:
            causes.append(_invalid(f"{path}.url", url, "user information is not permitted"))
        if parts.fragment or "#" in str(url):
            causes.append(_invalid(f"{path}.url", url, "fragments are not permitted"))
        if parts.query:
            causes.append(_invalid(f"{path}.url", url, "query parameters are not permitted"))
    if service is not None:
        spath = f"{path}.service"
        if not isinstance(service, dict):
            causes.append(_required(spath))
        else:
            if not service.get("namespace"):
                causes.append(_required(f"{spath}.namespace", "service namespace is required"))
            if not service.get("name"):
                causes.append(_required(f"{spath}.name", "service name is required"))
            svc_path = service.get("path")
            if svc_path is not None and not str(svc_path).startswith("/"):
                causes.append(_invalid(f"{spath}.path", svc_path, "must start with a '/'"))
            port = service.get("port", 443)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                causes.append(
                    _invalid(
                        f"{spath}.port", port, "port is not valid: must be between 1 and 65535"
                    )
                )
    ca = client.get("caBundle")
    if ca is not None:
        try:
            base64.b64decode(str(ca), validate=True)
        except (binascii.Error, ValueError):
            causes.append(_invalid(f"{path}.caBundle", "<bytes>", "must be base64-encoded"))
    return causes


def _is_fully_qualified(name: str) -> bool:
    return _is_dns_subdomain(name) and len(name.split(".")) >= 3


def configuration_causes(config: Obj) -> list[StatusCause]:
    """Why ``config`` (a ValidatingWebhookConfiguration, defaults applied) is invalid, as
    the API server's ValidateValidatingWebhookConfiguration answers for the fields the
    sandbox uses; plus matchConditions, which the sandbox refuses rather than ignore."""
    causes: list[StatusCause] = []
    webhooks = config.get("webhooks")
    if webhooks is None:
        return []
    if not isinstance(webhooks, list):
        return [_invalid("webhooks", webhooks, "must be a list")]
    seen: set[str] = set()
    for i, hook in enumerate(webhooks):
        path = f"webhooks[{i}]"
        if not isinstance(hook, dict):
            causes.append(_invalid(path, hook, "must be an object"))
            continue
        name = hook.get("name")
        if not isinstance(name, str) or not name:
            causes.append(_required(f"{path}.name"))
        elif not _is_fully_qualified(name):
            causes.append(
                _invalid(
                    f"{path}.name",
                    name,
                    "should be a domain with at least three segments separated by dots",
                )
            )
        elif name in seen:
            causes.append(
                {
                    "reason": "FieldValueDuplicate",
                    "message": f'Duplicate value: "{name}"',
                    "field": f"{path}.name",
                }
            )
        else:
            seen.add(name)
        rules = hook.get("rules") or []
        if not isinstance(rules, list):
            causes.append(_invalid(f"{path}.rules", rules, "must be a list"))
            rules = []
        for j, rule in enumerate(rules):
            rpath = f"{path}.rules[{j}]"
            if not isinstance(rule, dict):
                causes.append(_invalid(rpath, rule, "must be an object"))
                continue
            ops = rule.get("operations")
            causes.extend(_string_list_causes(f"{rpath}.operations", ops, what="operations"))
            for op in ops if isinstance(ops, list) else []:
                if op != "*" and op not in OPERATIONS:
                    causes.append(_unsupported(f"{rpath}.operations", op, ("*", *OPERATIONS)))
            causes.extend(
                _string_list_causes(f"{rpath}.apiGroups", rule.get("apiGroups"), what="API groups")
            )
            causes.extend(
                _string_list_causes(
                    f"{rpath}.apiVersions", rule.get("apiVersions"), what="API versions"
                )
            )
            causes.extend(_resource_causes(f"{rpath}.resources", rule.get("resources")))
            scope = rule.get("scope", "*")
            if scope not in ("*", "Cluster", "Namespaced"):
                causes.append(_unsupported(f"{rpath}.scope", scope, ("*", "Cluster", "Namespaced")))
        policy = hook.get("failurePolicy")
        if policy not in ("Fail", "Ignore"):
            causes.append(_unsupported(f"{path}.failurePolicy", policy, ("Fail", "Ignore")))
        match = hook.get("matchPolicy")
        if match not in ("Exact", "Equivalent"):
            causes.append(_unsupported(f"{path}.matchPolicy", match, ("Equivalent", "Exact")))
        side = hook.get("sideEffects")
        if side is None:
            causes.append(
                _required(
                    f"{path}.sideEffects",
                    "must specify one of None, NoneOnDryRun",
                )
            )
        elif side not in ("None", "NoneOnDryRun"):
            causes.append(_unsupported(f"{path}.sideEffects", side, ("None", "NoneOnDryRun")))
        versions = hook.get("admissionReviewVersions")
        vpath = f"{path}.admissionReviewVersions"
        if not isinstance(versions, list) or not versions:
            causes.append(_required(vpath, "must specify one of v1, v1beta1"))
        elif "v1" not in versions:
            # v1beta1 alone is valid for the API server; the sandbox only speaks v1.
            message = (
                "must include at least one of v1, v1beta1"
                if "v1beta1" not in versions
                else "must include v1: the klockproxy sandbox sends only admission.k8s.io/v1 "
                "AdmissionReviews"
            )
            causes.append(_invalid(vpath, versions, message))
        timeout = hook.get("timeoutSeconds")
        if not isinstance(timeout, int) or not 1 <= timeout <= 30:
            causes.append(
                _invalid(
                    f"{path}.timeoutSeconds",
                    timeout,
                    "the timeout value must be between 1 and 30 seconds",
                )
            )
        causes.extend(_selector_causes(f"{path}.namespaceSelector", hook.get("namespaceSelector")))
        causes.extend(_selector_causes(f"{path}.objectSelector", hook.get("objectSelector")))
        causes.extend(_client_config_causes(f"{path}.clientConfig", hook.get("clientConfig")))
        if hook.get("matchConditions"):
            causes.append(
                {
                    "reason": "FieldValueForbidden",
                    "message": "Forbidden: matchConditions (CEL) are not supported by the "
                    "klockproxy sandbox; it refuses them rather than call the webhook for "
                    "requests a real API server would not send",
                    "field": f"{path}.matchConditions",
                }
            )
    return causes


def set_defaults(config: Obj) -> None:
    """The v1 defaults the API server stores (SetDefaults_ValidatingWebhook)."""
    for hook in config.get("webhooks") or []:
        if not isinstance(hook, dict):
            continue
        hook.setdefault("failurePolicy", "Fail")
        hook.setdefault("matchPolicy", "Equivalent")
        hook.setdefault("namespaceSelector", {})
        hook.setdefault("objectSelector", {})
        hook.setdefault("timeoutSeconds", DEFAULT_TIMEOUT)
        for rule in hook.get("rules") or []:
            if isinstance(rule, dict):
                rule.setdefault("scope", "*")
        client = hook.get("clientConfig")
        if isinstance(client, dict) and isinstance(client.get("service"), dict):
            client["service"].setdefault("port", 443)


def validate_configuration(config: Obj) -> None:
    """Raise InvalidError (422) for an invalid ValidatingWebhookConfiguration."""
    causes = configuration_causes(config)
    if causes:
        name = str((config.get("metadata") or {}).get("name") or "")
        raise InvalidError("ValidatingWebhookConfiguration", name, causes, group=GROUP)


# ---------------------------------------------------------------------- calling


class CallError(KlockProxyError):
    """A webhook could not be called or gave an unusable answer (failurePolicy applies)."""


def _internal(message: str) -> ApiError:
    """apierrors.NewInternalError: 500 InternalError, the message repeated as a cause."""
    details: StatusDetails = {"causes": [{"message": message}]}
    return ApiError(
        f"Internal error occurred: {message}", code=500, reason="InternalError", details=details
    )


def denial(hook_name: str, status: Any) -> ApiError:
    """The API server's ToStatusErr: the webhook's Status, its message prefixed."""
    result: Obj = dict(status) if isinstance(status, dict) else {}
    code = result.get("code")
    if not isinstance(code, int) or code == 0:
        code = 403
    if code < 400:
        # A rejection is never answered with a success code.
        code = 400
    denied_by = f'admission webhook "{hook_name}" denied the request'
    message = result.get("message") if isinstance(result.get("message"), str) else ""
    reason = result.get("reason") if isinstance(result.get("reason"), str) else ""
    if message:
        text = f"{denied_by}: {message}"
    elif reason:
        text = f"{denied_by}: {reason}"
    else:
        text = f"{denied_by} without explanation"
    details = result.get("details") if isinstance(result.get("details"), dict) else None
    err = ApiError(text, code=code, details=details)
    if reason:
        err.reason = reason
    return err


def _ssl_context(ca_bundle: bytes) -> ssl.SSLContext:
    if not ca_bundle:
        # No caBundle: the API server trusts the system roots.
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca_bundle.decode("ascii", "replace"))
    return ctx


# OpenSSL verification codes -> Go's x509 wording for the common cases.
_GO_X509 = {
    18: "certificate signed by unknown authority",  # self-signed leaf
    19: "certificate signed by unknown authority",  # self-signed CA in the chain
    20: "certificate signed by unknown authority",  # issuer not in caBundle
    21: "certificate signed by unknown authority",
    10: "certificate has expired or is not yet valid",
    9: "certificate has expired or is not yet valid",
    62: "certificate is not valid for the requested host name",
}


def _describe(e: BaseException) -> str:
    """A Go-ish reason for a failed call (the API server's net/http error texts)."""
    if isinstance(e, TimeoutError):
        return "context deadline exceeded"
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        cert_error = e.certificate_error
        code = getattr(cert_error, "verify_code", None)
        verify = _GO_X509.get(code) if isinstance(code, int) else None
        if verify is None:
            verify = getattr(cert_error, "verify_message", "") or str(cert_error)
        return f"tls: failed to verify certificate: x509: {verify}"
    if isinstance(e, aiohttp.ClientSSLError):
        return f"remote error: tls: {e}"
    if isinstance(e, aiohttp.ClientConnectorError):
        os_error = e.os_error
        why = os.strerror(os_error.errno).lower() if os_error.errno else str(os_error)
        return f"dial tcp {e.host}:{e.port}: connect: {why}"
    return str(e) or type(e).__name__


class Dispatcher:
    """Calls the stored validating webhooks for each admitted operation.

    ``configurations`` returns the stored ValidatingWebhookConfigurations, ``namespace`` a
    stored Namespace by name, ``versions`` the served versions of a group/resource (the
    equivalent resources of matchPolicy Equivalent); ``service_addresses`` maps
    ``namespace/name`` of a webhook service to the ``host:port`` the sandbox dials in its
    place (no Services run here).
    """

    def __init__(
        self,
        configurations: Callable[[], list[Obj]],
        namespace: Callable[[str], Obj | None],
        service_addresses: Mapping[str, str] | None = None,
        versions: Callable[[str, str], list[str]] | None = None,
    ) -> None:
        self._configurations = configurations
        self._namespace = namespace
        self._versions = versions or (lambda group, resource: [])
        self.service_addresses = dict(service_addresses or {})
        self._contexts: dict[bytes, ssl.SSLContext] = {}

    def webhooks(self) -> list[Webhook]:
        configs = sorted(self._configurations(), key=lambda c: c["metadata"]["name"])
        return [hook for config in configs for hook in Webhook.from_config(config)]

    def _invocation(self, hook: Webhook, attrs: Attributes) -> Attributes | None:
        """The attributes ``hook`` is called with, or None when it does not match."""
        invocation: Attributes | None = None
        if any(rule.matches(attrs) for rule in hook.rules):
            invocation = attrs
        elif hook.match_policy == "Equivalent":
            invocation = self._equivalent(hook, attrs)
        if invocation is None:
            return None
        if not self._namespace_matches(hook, attrs) or not self._object_matches(hook, attrs):
            return None
        return invocation

    def _equivalent(self, hook: Webhook, attrs: Attributes) -> Attributes | None:
        """The request converted to another served version of the same resource that a
        rule names (earlier rules first), as the API server converts for Equivalent."""
        others = [v for v in self._versions(attrs.group, attrs.resource) if v != attrs.version]
        for rule in hook.rules:
            for version in others:
                converted = _at_version(attrs, version)
                if rule.matches(converted):
                    return converted
        return None

    def _namespace_matches(self, hook: Webhook, attrs: Attributes) -> bool:
        is_namespace = attrs.group == "" and attrs.resource == "namespaces"
        # Cluster-scoped requests other than on Namespaces are never exempted.
        if not attrs.namespace and not is_namespace:
            return True
        if not hook.namespace_selector:
            return True
        labels: Mapping[str, str]
        if is_namespace:
            # The Namespace's own labels: the new object, the stored one for a delete.
            ns_obj = attrs.old if attrs.operation == "DELETE" else (attrs.obj or attrs.old)
            labels = _labels(ns_obj) or {}
        else:
            stored = self._namespace(attrs.namespace)
            if stored is None:
                raise NotFoundError(
                    f'namespaces "{attrs.namespace}" not found',
                    details={"name": attrs.namespace, "kind": "namespaces"},
                )
            labels = _labels(stored) or {}
        return selector_matches(hook.namespace_selector, labels)

    @staticmethod
    def _object_matches(hook: Webhook, attrs: Attributes) -> bool:
        if not hook.object_selector:
            return True
        # Either object may match; one without metadata (PodExecOptions) never does.
        for candidate in (attrs.obj, attrs.old):
            labels = _labels(candidate)
            if labels is not None and selector_matches(hook.object_selector, labels):
                return True
        return False

    async def validate(self, attrs: Attributes) -> None:
        """Call every matching webhook in parallel; raise the API server's error for the
        first (in configuration order) that denies or fails closed."""
        if attrs.group == GROUP and attrs.resource in EXEMPT_RESOURCES:
            return
        calls = [(h, inv) for h in self.webhooks() if (inv := self._invocation(h, attrs))]
        if not calls:
            return
        results = await asyncio.gather(*(self._call_one(h, inv, attrs) for h, inv in calls))
        for err in results:
            if err is not None:
                raise err

    async def _call_one(
        self, hook: Webhook, attrs: Attributes, requested: Attributes
    ) -> ApiError | None:
        try:
            return await self._call(hook, attrs, requested)
        except CallError as e:
            message = f'failed calling webhook "{hook.name}": {e}'
            if hook.failure_policy == "Ignore":
                logger.warning("failed calling webhook, failing open %s: %s", hook.name, e)
                return None
            logger.warning("failed calling webhook, failing closed %s: %s", hook.name, e)
            return _internal(message)

    def _target(self, hook: Webhook) -> tuple[str, str, str, int, str]:
        """(URL shown in errors, host to dial, TLS server name, port, path with query)."""
        query = f"timeout={hook.timeout_seconds}s"
        if hook.url:
            parts = urlsplit(hook.url)
            host = parts.hostname or ""
            port = parts.port or 443
            path = parts.path or "/"
            sep = "&" if parts.query else "?"
            shown = f"{hook.url}{sep}{query}"
            return shown, host, host, port, f"{path}{sep}{query}"
        ns = str(hook.service.get("namespace", ""))
        name = str(hook.service.get("name", ""))
        port = int(hook.service.get("port", 443))
        path = str(hook.service.get("path") or "/")
        server_name = f"{name}.{ns}.svc"
        shown = f"https://{server_name}:{port}{path}?{query}"
        address = self.service_addresses.get(f"{ns}/{name}")
        if address is None:
            raise CallError(
                f'failed to call webhook: Post "{shown}": service "{ns}/{name}" has no address '
                "in the klockproxy sandbox (give one with --service-address "
                f"{ns}/{name}=HOST:PORT)"
            )
        host, _, port_text = address.rpartition(":")
        return shown, host.strip("[]"), server_name, int(port_text), f"{path}?{query}"

    def _context(self, ca_bundle: bytes) -> ssl.SSLContext:
        ctx = self._contexts.get(ca_bundle)
        if ctx is None:
            try:
                ctx = _ssl_context(ca_bundle)
            except ssl.SSLError as e:
                raise CallError(f"failed to call webhook: invalid caBundle: {e}") from e
            if len(self._contexts) >= MAX_CONTEXTS:
                # Stale caBundles of rewritten configurations: start afresh.
                self._contexts.clear()
            self._contexts[ca_bundle] = ctx
        return ctx

    async def _call(
        self, hook: Webhook, attrs: Attributes, requested: Attributes
    ) -> ApiError | None:
        uid = str(uuid.uuid4())
        review = {
            "kind": "AdmissionReview",
            "apiVersion": REVIEW_API_VERSION,
            "request": review_request(attrs, uid, requested),
        }
        shown, host, server_name, port, path = self._target(hook)
        ctx = self._context(hook.ca_bundle)
        host_part = f"[{host}]" if ":" in host else host
        url = f"https://{host_part}:{port}{path}"
        body = json.dumps(review, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(hook.timeout_seconds):
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "Accept": "application/json, */*",
                            "User-Agent": "kube-apiserver-admission",
                        },
                        ssl=ctx,
                        server_hostname=server_name,
                        allow_redirects=False,
                    ) as response,
                ):
                    raw = await response.content.read(MAX_RESPONSE + 1)
                    status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise CallError(f'failed to call webhook: Post "{shown}": {_describe(e)}') from e
        if len(raw) > MAX_RESPONSE:
            raise CallError("failed to call webhook: the response is too large")
        if status != 200:
            snippet = raw[:200].decode("utf-8", "replace")
            raise CallError(
                f'failed to call webhook: an error on the server ("{snippet}") has prevented '
                f"the request from succeeding (HTTP {status})"
            )
        return self._verdict(hook, uid, raw)

    @staticmethod
    def _verdict(hook: Webhook, uid: str, raw: bytes) -> ApiError | None:
        try:
            answer = json.loads(raw)
        except ValueError as e:
            raise CallError(
                f"failed to call webhook: couldn't get version/kind; json parse error: {e}"
            ) from e
        if not isinstance(answer, dict):
            raise CallError("failed to call webhook: the response is not a JSON object")
        prefix = "received invalid webhook response: "
        gvk = f"{answer.get('apiVersion', '')}, Kind={answer.get('kind', '')}"
        expected = (REVIEW_API_VERSION, "AdmissionReview")
        if (answer.get("apiVersion"), answer.get("kind")) != expected:
            raise CallError(
                f"{prefix}expected webhook response of {REVIEW_API_VERSION}, "
                f"Kind=AdmissionReview, got {gvk}"
            )
        response = answer.get("response")
        if not isinstance(response, dict):
            raise CallError(f"{prefix}webhook response was absent")
        if response.get("uid") != uid:
            raise CallError(
                f'{prefix}expected response.uid="{uid}", got "{response.get("uid", "")}"'
            )
        if response.get("patch") is not None:
            raise CallError(f"{prefix}validating webhook may not return response.patch")
        if response.get("patchType") is not None:
            raise CallError(f"{prefix}validating webhook may not return response.patchType")
        allowed = response.get("allowed")
        if not isinstance(allowed, bool):
            raise CallError(f"{prefix}response.allowed must be a boolean")
        if allowed:
            return None
        return denial(hook.name, response.get("status"))


def _at_version(attrs: Attributes, version: str) -> Attributes:
    """``attrs`` converted to ``version`` of its resource: the objects of the resource's own
    group/version get the new apiVersion (a CRD's conversion strategy None); the kind of a
    subresource that lives elsewhere (autoscaling/v1 Scale, policy/v1 Eviction) stays."""
    old_api = f"{attrs.group}/{attrs.version}" if attrs.group else attrs.version
    new_api = f"{attrs.group}/{version}" if attrs.group else version
    own_kind = (attrs.kind_group, attrs.kind_version) == (attrs.group, attrs.version)

    def convert(obj: Obj | None) -> Obj | None:
        if isinstance(obj, dict) and obj.get("apiVersion") == old_api:
            return {**obj, "apiVersion": new_api}
        return obj

    return replace(
        attrs,
        version=version,
        kind_version=version if own_kind else attrs.kind_version,
        obj=convert(attrs.obj) if own_kind else attrs.obj,
        old=convert(attrs.old) if own_kind else attrs.old,
    )


def _labels(obj: Obj | None) -> Mapping[str, str] | None:
    """The labels of ``obj`` ({} when none); None when it has no metadata at all."""
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    labels = meta.get("labels") or {}
    return labels if isinstance(labels, dict) else {}


__all__ = [
    "Attributes",
    "Dispatcher",
    "configuration_causes",
    "denial",
    "operation_options",
    "review_request",
    "set_defaults",
    "validate_configuration",
]
