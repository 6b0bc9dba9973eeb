"""The admission webhook server: ``POST /validate`` over HTTPS (aiohttp).

Every answer is an AdmissionReview v1 with the request's ``uid``; a denial carries the
proxy's message (``denied, there is a lock: map[aura:red] (Lock ...)``), which the API server
shows as ``admission webhook "<name>" denied the request: <message>``. Fail closed: Locks not
loaded yet, a lookup that fails, a decision that takes too long, any error at all - all answer
``allowed: false`` with the reason. A body that is not an AdmissionReview v1 gets 400 with the
reason, one over 3 MiB 413 (both as a Kubernetes Status).

The namespace controller's deletions, and the garbage collector's where the deletion that
caused them was judged on them, are allowed (see ``controller_cleanup``).

``WebhookServer`` is the service (``await start()`` / ``await stop()``); ``WebhookThread``
runs it in a thread for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from klockproxy.audit import AuditLog
from klockproxy.cluster.kubeconfig import OwnCredentials, own_upstream
from klockproxy.cluster.lock_sources import LockSet, create_lock_sources
from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError
from klockproxy.core.engine import Engine
from klockproxy.core.errors import ConfigError, DecodeError, Refusal, UpstreamError
from klockproxy.core.metadata import labels_of
from klockproxy.core.owners import DEPENDENT_KINDS, owner_keys, owner_refs
from klockproxy.core.paths import object_path
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import Status, failure, to_bytes
from klockproxy.core.types import Operation
from klockproxy.health import HealthServer, serve_app
from klockproxy.judge import (
    Caller,
    Decider,
    Lookups,
    covers_or_consequences,
)
from klockproxy.loop_thread import LoopThread, cancel
from klockproxy.metrics import Metrics, lock_state, verb_label
from klockproxy.service import (
    ALL_INTERFACES,
    OptionTexts,
    ServedSettings,
    StartedOrStopped,
    parse_listen,
    wait_for_locks,
)
from klockproxy.webhook.review import (
    MAX_REVIEW_BYTES,
    AdmissionReviewWire,
    Review,
    ReviewError,
    allow,
    deny,
    gather,
    parse_review,
)
from klockproxy.webhook.review import to_bytes as review_bytes

logger = logging.getLogger(__name__)

VALIDATE_PATH = "/validate"
DEFAULT_LISTEN = "0.0.0.0:9443"
# The API server waits at most timeoutSeconds (5 in the shipped configuration): answer a
# refusal before that rather than let the call time out.
DECISION_TIMEOUT = 4.0
# How often certificate files given with --tls-cert/--tls-key are checked for a renewal.
CERT_FILE_POLL = 10.0

# Controllers that carry out deletions judged already (see ``controller_cleanup``).
GARBAGE_COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"
NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"
CONTROLLER_USERS = frozenset({GARBAGE_COLLECTOR, NAMESPACE_CONTROLLER})
# The kinds a judged DELETE searches for the dependents the garbage collector deletes after it.
_SEARCHED_KINDS = frozenset((ref.group, ref.resource) for ref in DEPENDENT_KINDS)
# Owner kinds known to be namespaced: deleting one passes the webhook (its configuration
# covers every namespaced resource), and that judged DELETE searched its dependents. A
# cluster-scoped owner's DELETE is not sent to the webhook, a custom kind's scope is unknown.
NAMESPACED_OWNER_KINDS = frozenset(
    {
        ("", "Pod"),
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "Service"),
        ("", "PersistentVolumeClaim"),
        ("", "ServiceAccount"),
        ("", "ReplicationController"),
        ("apps", "ReplicaSet"),
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "Job"),
        ("batch", "CronJob"),
    }
)

# Operations judged on the objects a review carries, without reading anything.
_LOCAL_OPERATIONS = frozenset({Operation.CREATE, Operation.UPDATE})
_FORBIDDEN_PREFIX = re.compile(r'^[^\s"]+(?: "[^"]*")? is forbidden: ')


def controller_cleanup(review: Review) -> bool:
    """Whether the garbage collector or the namespace controller is carrying out a deletion
    that was judged already (then it is allowed without judging it again).

    - The namespace controller's DELETEs: the namespace's DELETE was refused while any DELETE
      Lock in it applied to whoever deleted it.
    - The garbage collector's DELETE of an object whose owners are all of kinds known to be
      namespaced, when the object is of a kind a judged DELETE searches
      (``DEPENDENT_KINDS``): the owner's DELETE (or its own owner's, up the chain) was judged
      on this object. Anything else it deletes is judged like any request: an object with a
      cluster-scoped or custom owner, or of a kind no search covers, might never have been
      judged.
    - UPDATEs by either that change no labels and add no owner (removing finalizers and
      orphaned owner references): they delete nothing.
    """
    user = review.user.username
    if user not in CONTROLLER_USERS:
        return False
    old, new = review.old_object, review.object
    if review.operation is Operation.DELETE:
        if user == NAMESPACE_CONTROLLER:
            return True
        ref = review.resource
        if ref.subresource or (ref.group, ref.resource) not in _SEARCHED_KINDS or old is None:
            return False
        refs = owner_refs(old)
        return bool(refs) and all(_owner_kind(r) in NAMESPACED_OWNER_KINDS for r in refs)
    if review.operation is not Operation.UPDATE or not review.carries_parent:
        return False
    if old is None or new is None:
        return False
    try:
        return labels_of(old) == labels_of(new) and owner_keys(new) <= owner_keys(old)
    except DecodeError:
        return False


def _owner_kind(ref: Mapping[str, Any]) -> tuple[str, str]:
    api_version = str(ref.get("apiVersion", ""))
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    return group, str(ref.get("kind", ""))


def covered(engine: Engine, review: Review) -> bool:
    """Whether a loaded Lock could affect this review (else it is allowed at once).

    Besides the operation itself: a CRD deletion (its objects), and an UPDATE that may add
    an owner reference or a Job TTL while DELETE Locks exist in the namespace.
    """
    info = review.info
    op = info.operation
    if op is None:
        return True
    if covers_or_consequences(info, engine, op):
        return True
    return (
        op is Operation.UPDATE
        and review.carries_parent
        and engine.covers(info.namespace, Operation.DELETE)
    )


def webhook_message(status: Status) -> str:
    """The proxy's message without its ``pods "x" is forbidden: `` head: the API server
    puts its own (``admission webhook "..." denied the request: ``) in front."""
    message = status["message"]
    if status["code"] == 403:
        return _FORBIDDEN_PREFIX.sub("", message, count=1)
    return message


def _status_response(code: int, message: str) -> web.Response:
    return web.Response(
        status=code, body=to_bytes(failure(code, message)), content_type="application/json"
    )


# ---------------------------------------------------------------------------------------------
# Serving certificates


class CertSource(Protocol):
    """Where the serving certificate comes from: files, or the Secret (``webhook.certs``)."""

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The server context (its certificate is replaced in place on renewal)."""
        ...

    def reasons_not_ready(self) -> list[str]:
        """Why the webhook cannot be trusted yet (the CA not injected...); empty when ready."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def server_context() -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 at least) without a certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class FileCerts:
    """``--tls-cert`` / ``--tls-key`` (cert-manager mounts them): reloaded when they change."""

    def __init__(self, cert_file: str, key_file: str, poll: float = CERT_FILE_POLL) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._poll = poll
        self._ctx = server_context()
        self._stamp: tuple[int, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._load()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ctx

    def reasons_not_ready(self) -> list[str]:
        return []

    def _stamps(self) -> tuple[int, ...]:
        c, k = Path(self.cert_file).stat(), Path(self.key_file).stat()
        return (c.st_mtime_ns, c.st_size, k.st_mtime_ns, k.st_size)

    def _load(self) -> None:
        try:
            stamp = self._stamps()
            # A context's certificate can be replaced: new handshakes use the new one.
            self._ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the serving certificate: {e}") from e
        self._stamp = stamp

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="klockproxy-webhook-cert-files")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                if self._stamps() != self._stamp:
                    self._load()
                    logger.info("serving certificate reloaded from %s", self.cert_file)
            except (OSError, ConfigError) as e:
                # Half-written files during a rotation: keep the current one, retry later.
                logger.warning("serving certificate not reloaded: %s", e)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)


# ---------------------------------------------------------------------------------------------
# The server


@dataclass(kw_only=True)
class WebhookSettings(ServedSettings):
    """Everything ``klockproxy webhook`` is told (besides what every service is)."""

    listen: str = DEFAULT_LISTEN
    cert_secret: str | None = None  # NAMESPACE/NAME
    webhook_config: str | None = None


class WebhookServer(StartedOrStopped):
    """The webhook service: ``await start()`` (listening when it returns), ``await stop()``.

    ``lock_set``, ``lookups`` and ``certs`` may be given (tests, benchmarks); otherwise they
    are built from the settings (the kubeconfig context, or the pod's service account).
    """

    # A kubeconfig first: the webhook is often run outside the cluster it serves (tests,
    # development); in a pod without one, its service account.
    option_texts = OptionTexts(
        "HTTPS POST /validate",
        OwnCredentials.KUBECONFIG_THEN_POD,
        ready="once the Locks synced and the CA is injected",
    )

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        lock_set: LockSet | None = None,
        lookups: Lookups | None = None,
        certs: CertSource | None = None,
    ) -> None:
        self.settings = settings
        self.lock_set = lock_set
        self.lookups = lookups
        self.certs = certs
        self.metrics = Metrics()
        self.url = ""
        self.health_url = ""
        self.audit: AuditLog | None = None
        self._health: HealthServer | None = None
        self._runner: web.AppRunner | None = None
        self._run_dir: Path | None = None
        self._own_lookups = False
        self._counters: dict[tuple[str, str], Any] = {}
        # What the garbage collector would delete (cluster.ownership), watched with the
        # webhook's own credentials; None with injected lookups that cannot watch.
        self.ownership: OwnershipIndex | None = None

    # ----------------------------------------------------------------- lifecycle

    def ready_line(self) -> str:
        """The line ``webhook`` prints once it listens."""
        line = f"klockproxy webhook serving on {self.url}/validate"
        if self.health_url:
            line += f" (health: {self.health_url})"
        return line

    async def _start(self) -> None:
        """Load the upstream, the Locks and the certificates, then listen. Raises
        ConfigError (or LockValidationError) with a message fit for the user."""
        s = self.settings
        host, port = parse_listen(s.listen, default_host=ALL_INTERFACES)
        upstream: UpstreamConfig | None = None
        if self.lookups is None or self.lock_set is None or self.certs is None:
            upstream = await self._upstream_config()
        if self.lookups is None:
            if upstream is None:
                raise ConfigError("the webhook needs an API server to read objects from")
            self.lookups = Upstream(upstream)
            self._own_lookups = True
        if self.audit is None and s.audit_log:
            self.audit = AuditLog(s.audit_log)
        if self.lock_set is None:
            self.lock_set = create_lock_sources(s.locks, upstream, s.default_namespace)
        await self.lock_set.start()
        self.metrics.track_locks(lambda: lock_state(self.lock_set))
        if isinstance(self.lookups, Upstream) and self.lookups.has_own_credentials:
            await self._start_ownership(self.lookups.config, self.lock_set)
        if self.certs is None:
            self.certs = await self._cert_source(upstream, host)
        await self.certs.start()
        if s.health_listen:
            h_host, h_port = parse_listen(
                s.health_listen, "--health-listen", default_host=ALL_INTERFACES
            )
            self._health = HealthServer(
                h_host, h_port, self.reasons_not_ready, self.metrics.registry
            )
            self.health_url = await self._health.start()
        await self._listen(host, port)
        await wait_for_locks(self.lock_set, s.locks_ready_timeout, "every review is refused")

    async def _start_ownership(self, config: UpstreamConfig, lock_set: LockSet) -> None:
        index = OwnershipIndex.over(config)
        reason = await index.permitted()
        if reason:
            # As shipped (deploy/webhook), the webhook's RBAC lists only the kinds the
            # per-request search needs: keep that search, and say how to enable the index.
            logger.warning(
                "webhook: no ownership index (%s): cascades are searched per request among "
                "common kinds only; grant list and watch on every resource to enable it",
                reason,
            )
            await index.stop()
            return
        self.ownership = index
        await index.start()
        previous = lock_set.on_change

        def changed() -> None:
            if previous is not None:
                previous()
            if lock_set.engine is not None:
                index.follow(lock_set.engine)

        lock_set.on_change = changed
        if lock_set.engine is not None:
            index.follow(lock_set.engine)

    async def _upstream_config(self) -> UpstreamConfig:
        s = self.settings
        self._run_dir = Path(tempfile.mkdtemp(prefix="klockproxy-webhook-"))
        upstream, _ = await asyncio.to_thread(
            own_upstream,
            self.option_texts.credentials,
            s.kubeconfig,
            s.context,
            self._run_dir / "upstream",
        )
        return upstream

    async def _cert_source(self, upstream: UpstreamConfig | None, host: str) -> CertSource:
        s = self.settings
        if s.tls_cert and s.tls_key:
            return FileCerts(s.tls_cert, s.tls_key)
        if s.cert_secret:
            from klockproxy.webhook.certs import SecretCerts

            if upstream is None:
                raise ConfigError("--cert-secret needs an API server")
            return SecretCerts(Upstream(upstream), s.cert_secret, s.webhook_config, host)
        raise ConfigError("give --tls-cert and --tls-key, or --cert-secret NAMESPACE/NAME")

    async def _listen(self, host: str, port: int) -> None:
        if self.certs is None:
            raise ConfigError("no serving certificate")
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(VALIDATE_PATH, self._validate)
        app.router.add_route("*", VALIDATE_PATH, _method_not_allowed)
        app.router.add_route("*", "/{path:.*}", _not_found)
        self._runner, self.url = await serve_app(
            app, host, port, ssl_context=self.certs.ssl_context
        )

    async def stop(self) -> None:
        """Stop listening, the lock sources, the certificate renewal (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        health, self._health = self._health, None
        if health is not None:
            await health.stop()
        if self.certs is not None:
            await self.certs.stop()
        if self.lock_set is not None:
            await self.lock_set.stop()
        ownership, self.ownership = self.ownership, None
        if ownership is not None:
            await ownership.stop()
        if self._own_lookups and self.lookups is not None:
            await self.lookups.close()
        if self.audit is not None:
            self.audit.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def reasons_not_ready(self) -> list[str]:
        """Why the webhook should take no traffic yet; empty when ready."""
        reasons = []
        if self.lock_set is None or not self.lock_set.ready:
            reasons.append("the Locks have not synced")
        if self.certs is not None:
            reasons.extend(self.certs.reasons_not_ready())
        return reasons

    def _count(self, verb: str, verdict: str) -> None:
        # The labelled child per (verb, verdict), kept: prometheus' labels() lookup costs
        # more than the rest of an allowed decision.
        child = self._counters.get((verb, verdict))
        if child is None:
            child = self._counters[(verb, verdict)] = self.metrics.requests.labels(
                verb_label(verb), verdict
            )
        child.inc()

    # ----------------------------------------------------------------- requests

    async def _validate(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_REVIEW_BYTES:
            self._count("create", "refused")
            return _status_response(
                413, f"klockproxy: reviews are at most {MAX_REVIEW_BYTES} bytes"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count("create", "refused")
            return _status_response(
                413, f"klockproxy: reviews are at most {MAX_REVIEW_BYTES} bytes"
            )
        try:
            review = parse_review(body)
        except ReviewError as e:
            self._count("create", "refused")
            return _status_response(400, f"klockproxy: not an AdmissionReview v1: {e}")
        answer = await self.answer(review)
        return web.Response(body=review_bytes(answer), content_type="application/json")

    async def answer(self, review: Review) -> AdmissionReviewWire:
        """The answer to one review; never raises (any failure is a refusal)."""
        try:
            if review.carries_parent and review.operation in _LOCAL_OPERATIONS:
                # Judged on the review's own objects, no lookup: nothing to wait for.
                return await self._answer(review)
            async with asyncio.timeout(DECISION_TIMEOUT):
                return await self._answer(review)
        except TimeoutError:
            message = f"klockproxy: no decision within {DECISION_TIMEOUT:.0f} s (fail closed)"
            return self._refuse(review, 504, "Timeout", message)
        except Exception as e:
            # Fail closed, and say why without leaking the object.
            logger.exception("review %s failed", review.uid)
            return self._refuse(
                review, 500, "InternalError", f"klockproxy: cannot judge this request: {e}"
            )

    async def _answer(self, review: Review) -> AdmissionReviewWire:
        info = review.info
        lock_set = self.lock_set
        engine = lock_set.engine if lock_set is not None else None
        if engine is None:
            return self._refuse(
                review,
                503,
                "ServiceUnavailable",
                "klockproxy: the Locks are not loaded yet; mutations are refused until they are",
            )
        if controller_cleanup(review) or not covered(engine, review):
            self._count(info.verb, "passed")
            return allow(review.uid)
        lookups = self.lookups
        if lookups is None:
            raise ConfigError("the webhook has no API server to read from")
        try:
            subject = await gather(review, self._reader(lookups))
        except Refusal as r:
            return self._refuse_status(review, r.status)
        try:
            # The webhook's own lookups (no caller headers): its service account reads.
            decider = Decider(lookups, engine, self.ownership)
            verdict = await decider.decide(subject, Caller.known(review.user))
        except DecodeError as e:
            # Labels that are not strings: the API server would not have stored them.
            return self._refuse_status(
                review, failure(400, f"klockproxy: cannot read the object's labels: {e}")
            )
        if verdict.status is None:
            self._count(info.verb, "allowed")
            self._audit(review, "allowed", 200)
            return allow(review.uid)
        return self._refuse_status(review, verdict.status, verdict.locks)

    def _reader(self, lookups: Lookups) -> Any:
        async def read(info: RequestInfo) -> Mapping[str, Any] | None:
            path = object_path(info)
            try:
                return await lookups.get_object(path, {})
            except UpstreamStatusError as e:
                code = e.code if e.code in (401, 403) else 503
                raise Refusal(
                    failure(
                        code,
                        f"klockproxy: a lock covers this request and reading {path} failed: "
                        f"{e.message}",
                    )
                ) from e
            except UpstreamError as e:
                raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e

        return read

    def _refuse_status(
        self, review: Review, status: Status, locks: Sequence[str] = ()
    ) -> AdmissionReviewWire:
        """Answer a refusal: ``locks`` are the Locks that decided a denial (none: refused
        for another reason, such as a failed lookup)."""
        message = webhook_message(status)
        code = status["code"]
        verdict = "denied" if locks else "refused"
        self._count(review.info.verb, verdict)
        if locks:
            self.metrics.denied_by(list(locks))
        self._audit(review, verdict, code, locks)
        return deny(review.uid, code, status["reason"], message)

    def _refuse(self, review: Review, code: int, reason: str, message: str) -> AdmissionReviewWire:
        self._count(review.info.verb, "refused")
        self._audit(review, "refused", code)
        return deny(review.uid, code, reason, message)

    def _audit(self, review: Review, verdict: str, code: int, locks: Sequence[str] = ()) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record_request(
                review.info, user=review.user, verdict=verdict, locks=locks, code=code
            )
        except (OSError, ValueError) as e:
            logger.warning("audit log write failed: %s", e)


# Other methods and paths answer a Status too, like every other answer: as routes of their
# own rather than a middleware, which every review would pay for.
async def _method_not_allowed(request: web.Request) -> web.Response:
    response = _status_response(405, "klockproxy webhook: Method Not Allowed")
    response.headers["Allow"] = "POST"
    return response


async def _not_found(request: web.Request) -> web.Response:
    return _status_response(404, "klockproxy webhook: Not Found")


# ---------------------------------------------------------------------------------------------
# In a thread (tests, benchmarks)


class WebhookThread(LoopThread[WebhookServer]):
    """Run a ``WebhookServer`` on its own event loop in a daemon thread."""

    thread_name = "klockproxy-webhook"

    def __init__(self, server: WebhookServer) -> None:
        super().__init__(server)

    @property
    def server(self) -> WebhookServer:
        """The running server."""
        return self.service

    def engine(self) -> Engine | None:
        """The webhook's current engine (read on its loop)."""
        lock_set = self.service.lock_set
        return self.call(lambda: lock_set.engine if lock_set is not None else None)


__all__ = [
    "CONTROLLER_USERS",
    "MAX_REVIEW_BYTES",
    "VALIDATE_PATH",
    "FileCerts",
    "WebhookServer",
    "WebhookSettings",
    "WebhookThread",
    "controller_cleanup",
    "covered",
    "webhook_message",
]
