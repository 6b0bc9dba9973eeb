"""Prometheus metrics of the serving modes (gateway, webhook, local proxy), in one place.

Every label has a bounded set of values: verbs are the Kubernetes verbs (anything else is
``other``), verdicts a fixed list, Locks are named by ``namespace/name`` (their number is
what the operators created), reviews by kind and result. Nothing is labelled by user, object,
address or path, so the number of series cannot grow with traffic.

Each service creates its own :class:`Metrics` (its own ``CollectorRegistry``), so several
services in one process (tests) do not share counters; ``klockproxy.health`` serves
``registry`` on ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from klockproxy.cluster.lock_sources import LockSet

# The verbs the API server's RequestInfo knows; anything else is counted as "other".
VERBS = frozenset(
    {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "connect",
        "post",
        "put",
        "head",
        "options",
    }
)

# What happened to a request:
#   passed   - forwarded without a lock decision (a read, or no Lock covers it)
#   allowed  - judged against the Locks and forwarded
#   denied   - refused by a Lock (403)
#   refused  - refused before or beside the lock decision: unauthenticated (401), impersonation
#              not allowed (403), malformed (400), not ready or lookup failure (5xx)
VERDICTS = ("passed", "allowed", "denied", "refused")

# Identity reviews sent to the API server, and their outcome.
REVIEW_KINDS = ("tokenreview", "selfsubjectreview", "subjectaccessreview")
REVIEW_RESULTS = ("ok", "rejected", "error")

# Seconds: the API server answers in milliseconds; watches and exec end up in +Inf.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def verb_label(verb: str) -> str:
    """``verb`` when it is a known Kubernetes verb, else ``other`` (bounded cardinality)."""
    verb = verb.lower()
    return verb if verb in VERBS else "other"


@dataclass(frozen=True)
class LockState:
    """What ``/metrics`` reports about the Locks: how many, and each source's sync state."""

    loaded: int
    # source kind ("cluster", "files") -> synced
    sources: Mapping[str, bool]


def lock_state(lock_set: LockSet | None) -> LockState:
    """What ``lock_set`` has loaded and which of its sources ("cluster", "files") synced."""
    from klockproxy.cluster.lock_sources import ClusterLockSource, FileLockSource

    if lock_set is None:
        return LockState(loaded=0, sources={})
    sources: dict[str, bool] = {}
    for source in lock_set.sources:
        if isinstance(source, ClusterLockSource):
            kind = "cluster"
        else:
            kind = "files" if isinstance(source, FileLockSource) else type(source).__name__
        sources[kind] = bool(source.ready)
    return LockState(loaded=lock_set.lock_count, sources=sources)


class _LockCollector(Collector):
    """Reads the lock state at scrape time (never stale, nothing to keep in step)."""

    def __init__(self) -> None:
        self.state: Callable[[], LockState] | None = None

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily("klockproxy_locks_loaded", "Locks currently enforced.")
        synced = GaugeMetricFamily(
            "klockproxy_lock_source_synced",
            "1 when the lock source has its full list of Locks (and keeps it current).",
            labels=["source"],
        )
        if self.state is not None:
            state = self.state()
            loaded.add_metric([], state.loaded)
            for source, ok in sorted(state.sources.items()):
                synced.add_metric([source], 1.0 if ok else 0.0)
        yield loaded
        yield synced


class Metrics:
    """The metric objects of one service, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, documentation: str, *labels: str) -> Counter:
            return Counter(name, documentation, labels, registry=r)

        self.requests = counter(
            "klockproxy_requests",
            "Requests by Kubernetes verb and verdict (passed, allowed, denied, refused).",
            "verb",
            "verdict",
        )
        self.denials = counter(
            "klockproxy_lock_denials",
            "Operations denied, by deciding Lock (namespace/name).",
            "lock",
        )
        self.identity_reviews = counter(
            "klockproxy_identity_reviews",
            "Reviews sent to the API server to learn or check who is calling, by kind and result.",
            "kind",
            "result",
        )
        self.identity_cache = counter(
            "klockproxy_identity_cache_lookups",
            "Identity cache lookups: hit (answered from the cache), miss (a review was needed), "
            "shared (waited for a review another request had sent), limited (refused by the "
            "miss rate limit).",
            "result",
        )
        self.upstream_latency = Histogram(
            "klockproxy_upstream_latency_seconds",
            "Time from forwarding a request to the API server until its response headers arrived.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._locks = _LockCollector()
        r.register(self._locks)

    def request(self, verb: str, verdict: str) -> None:
        """Count one request."""
        self.requests.labels(verb_label(verb), verdict).inc()

    def denied_by(self, locks: list[str] | tuple[str, ...]) -> None:
        """Count a denial against each deciding Lock."""
        for key in locks:
            self.denials.labels(key).inc()

    def review(self, kind: str, result: str) -> None:
        """Count one identity review sent to the API server."""
        self.identity_reviews.labels(kind, result).inc()

    def cache(self, result: str) -> None:
        """Count one identity cache lookup."""
        self.identity_cache.labels(result).inc()

    def track_locks(self, state: Callable[[], LockState]) -> None:
        """Report the lock state that ``state()`` returns at each scrape."""
        self._locks.state = state
