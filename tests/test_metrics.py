"""Metrics: bounded label values, one registry per service."""

from __future__ import annotations

from prometheus_client import generate_latest

from klockproxy.metrics import LockState, Metrics, verb_label


def test_unknown_verbs_are_counted_as_other() -> None:
    m = Metrics()
    for verb in ("GET", "patch", "BREW", "x" * 100, "../etc"):
        m.request(verb, "passed")
    text = generate_latest(m.registry).decode()
    assert 'verb="get"' in text and 'verb="patch"' in text
    assert 'klockproxy_requests_total{verb="other",verdict="passed"} 3.0' in text
    assert verb_label("DeleteCollection") == "deletecollection"


def test_services_do_not_share_counters() -> None:
    a, b = Metrics(), Metrics()
    a.review("selfsubjectreview", "ok")
    a.cache("hit")
    a.denied_by(["default/lockred", "default/lockred"])
    a.upstream_latency.observe(0.003)
    text_a = generate_latest(a.registry).decode()
    text_b = generate_latest(b.registry).decode()
    assert 'klockproxy_identity_reviews_total{kind="selfsubjectreview",result="ok"} 1.0' in text_a
    assert 'klockproxy_identity_cache_lookups_total{result="hit"} 1.0' in text_a
    assert 'klockproxy_lock_denials_total{lock="default/lockred"} 2.0' in text_a
    assert "klockproxy_upstream_latency_seconds_count 1.0" in text_a
    assert "selfsubjectreview" not in text_b
    # Without a lock state the gauges exist but carry no sample.
    assert "\nklockproxy_locks_loaded " not in text_b


def test_lock_state_is_read_at_scrape_time() -> None:
    m = Metrics()
    state = {"n": 1}
    m.track_locks(lambda: LockState(loaded=state["n"], sources={"files": True}))
    assert "klockproxy_locks_loaded 1.0" in generate_latest(m.registry).decode()
    state["n"] = 4
    text = generate_latest(m.registry).decode()
    assert "klockproxy_locks_loaded 4.0" in text
    assert 'klockproxy_lock_source_synced{source="files"} 1.0' in text
