"""IdentityResolver: cached SelfSubjectReviews keyed by a hash of the credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from klockproxy.cluster.identity import IdentityResolver, cache_key, is_auth_header
from klockproxy.core.errors import UpstreamError
from klockproxy.core.types import UserInfo


class FakeReviewer:
    """Answers with a user derived from the headers; counts calls; can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str | Sequence[str]]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        self.calls.append(dict(headers))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        user = headers.get("Impersonate-User") or "admin"
        assert isinstance(user, str)
        return UserInfo(username=user)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_auth_headers_are_authorization_and_impersonation() -> None:
    assert is_auth_header("Authorization")
    assert is_auth_header("impersonate-user")
    assert is_auth_header("Impersonate-Extra-Scopes")
    assert not is_auth_header("Accept")


def test_cache_key_is_a_hash_that_ignores_other_headers_and_name_case() -> None:
    key = cache_key({"Authorization": "Bearer secret-token", "Accept": "x"})
    assert key == cache_key({"authorization": "Bearer secret-token"})
    assert "secret-token" not in key
    assert len(key) == 64
    assert key != cache_key({"Authorization": "Bearer other"})
    # Impersonation changes who the request runs as, so it changes the key.
    assert key != cache_key({"Authorization": "Bearer secret-token", "Impersonate-User": "j"})
    # Group order and splitting are kept: the encoding is unambiguous.
    assert cache_key({"Impersonate-Group": ["a", "b"]}) != cache_key({"Impersonate-Group": "ab"})


async def test_resolve_caches_within_ttl_and_asks_again_after() -> None:
    reviewer = FakeReviewer()
    clock = Clock()
    resolver = IdentityResolver(reviewer, ttl=60, clock=clock)
    headers = {"Authorization": "Bearer t", "Impersonate-User": "jonny", "Accept": "*/*"}
    assert await resolver.resolve(headers) == UserInfo("jonny")
    assert await resolver.resolve(headers) == UserInfo("jonny")
    assert len(reviewer.calls) == 1
    # Only identity headers are sent to the API server.
    assert reviewer.calls[0] == {"Authorization": "Bearer t", "Impersonate-User": "jonny"}
    clock.now += 61
    assert await resolver.resolve(headers) == UserInfo("jonny")
    assert len(reviewer.calls) == 2


async def test_different_credentials_are_different_entries() -> None:
    reviewer = FakeReviewer()
    resolver = IdentityResolver(reviewer)
    assert await resolver.resolve({"Authorization": "Bearer t"}) == UserInfo("admin")
    assert await resolver.resolve({"Authorization": "Bearer t", "Impersonate-User": "j"}) == (
        UserInfo("j")
    )
    assert len(reviewer.calls) == 2
    assert len(resolver) == 2


async def test_cache_is_bounded_least_recently_used_first() -> None:
    reviewer = FakeReviewer()
    resolver = IdentityResolver(reviewer, max_entries=2)
    await resolver.resolve({"Impersonate-User": "a"})
    await resolver.resolve({"Impersonate-User": "b"})
    await resolver.resolve({"Impersonate-User": "a"})  # refresh a
    await resolver.resolve({"Impersonate-User": "c"})  # evicts b
    assert len(resolver) == 2
    await resolver.resolve({"Impersonate-User": "a"})
    assert len(reviewer.calls) == 3
    await resolver.resolve({"Impersonate-User": "b"})
    assert len(reviewer.calls) == 4


async def test_errors_are_raised_and_not_cached() -> None:
    reviewer = FakeReviewer()
    reviewer.fail = UpstreamError("down")
    resolver = IdentityResolver(reviewer)
    with pytest.raises(UpstreamError):
        await resolver.resolve({"Authorization": "Bearer t"})
    reviewer.fail = None
    assert await resolver.resolve({"Authorization": "Bearer t"}) == UserInfo("admin")
    assert len(reviewer.calls) == 2


async def test_concurrent_requests_share_one_review() -> None:
    reviewer = FakeReviewer()
    reviewer.gate = asyncio.Event()
    resolver = IdentityResolver(reviewer)
    tasks = [asyncio.create_task(resolver.resolve({"Authorization": "Bearer t"})) for _ in range(5)]
    await asyncio.sleep(0)
    reviewer.gate.set()
    users = await asyncio.gather(*tasks)
    assert users == [UserInfo("admin")] * 5
    assert len(reviewer.calls) == 1


async def test_concurrent_waiters_see_the_error_too() -> None:
    reviewer = FakeReviewer()
    reviewer.gate = asyncio.Event()
    reviewer.fail = UpstreamError("down")
    resolver = IdentityResolver(reviewer)
    tasks = [asyncio.create_task(resolver.resolve({"Authorization": "Bearer t"})) for _ in range(3)]
    await asyncio.sleep(0)
    reviewer.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) for r in results)
    assert len(reviewer.calls) == 1


async def test_a_cancelled_leader_does_not_fail_its_waiters() -> None:
    reviewer = FakeReviewer()
    reviewer.gate = asyncio.Event()
    resolver = IdentityResolver(reviewer)
    leader = asyncio.create_task(resolver.resolve({"Authorization": "Bearer t"}))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(resolver.resolve({"Authorization": "Bearer t"}))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    reviewer.gate.set()
    assert await waiter == UserInfo("admin")
    assert leader.cancelled()


class Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.message = "Unauthorized" if code == 401 else "nope"


async def test_refusals_are_kept_briefly_and_errors_never() -> None:
    from klockproxy.cluster.identity import ReviewRefused

    reviewer, clock = FakeReviewer(), Clock()
    resolver = IdentityResolver(reviewer, failure_ttl=5, clock=clock)
    reviewer.fail = Refused(401)
    bad = {"Authorization": "Bearer bad"}
    for _ in range(3):
        with pytest.raises((Refused, ReviewRefused)):
            await resolver.resolve(bad)
    assert len(reviewer.calls) == 1  # the refusal was remembered
    clock.now += 5.1
    with pytest.raises(Refused):
        await resolver.resolve(bad)
    assert len(reviewer.calls) == 2
    reviewer.fail = UpstreamError("unreachable")
    other = {"Authorization": "Bearer other"}
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await resolver.resolve(other)
    assert len(reviewer.calls) == 4  # errors are never cached


async def test_a_flood_of_bad_tokens_neither_evicts_good_callers_nor_reaches_the_server() -> None:
    from klockproxy.cluster.identity import ReviewRefused

    reviewer, clock = FakeReviewer(), Clock()
    resolver = IdentityResolver(
        reviewer, max_entries=10, max_failures=10, miss_rate=1.0, miss_burst=20, clock=clock
    )
    good = {"Authorization": "Bearer good"}
    assert (await resolver.resolve(good)).username == "admin"
    reviewer.fail = Refused(401)
    limited = 0
    for i in range(500):
        try:
            await resolver.resolve({"Authorization": f"Bearer bad-{i}"})
        except ReviewRefused as e:
            limited += e.code == 429
        except Refused:
            pass
    # Only the burst reached the API server; the rest were refused with 429.
    assert len(reviewer.calls) <= 21
    assert limited >= 479
    assert resolver.failures <= 10
    # The good caller is still known: no review needed.
    reviewer.fail = None
    calls = len(reviewer.calls)
    assert (await resolver.resolve(good)).username == "admin"
    assert len(reviewer.calls) == calls


async def test_an_unauthenticated_answer_is_never_a_user() -> None:
    from klockproxy.cluster.identity import ReviewRefused

    class Anonymous(FakeReviewer):
        async def self_subject_review(self, headers):  # type: ignore[no-untyped-def]
            self.calls.append(dict(headers))
            return UserInfo(username="")

    resolver = IdentityResolver(Anonymous())
    with pytest.raises(ReviewRefused) as e:
        await resolver.resolve({"Authorization": "Bearer x"})
    assert e.value.code == 401


async def test_keys_are_keyed_per_resolver() -> None:
    """The cache key of a token differs per process key (no offline guessing)."""
    from klockproxy.cluster.identity import cache_key as key_of

    headers = {"Authorization": "Bearer secret"}
    assert key_of(headers, b"a" * 32) != key_of(headers, b"b" * 32)
    assert key_of(headers, b"a" * 32) != key_of(headers)
