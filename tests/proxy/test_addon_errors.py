"""Through the addon, a body the API server would reject is a 400 naming the field, never a
500 "internal error while checking locks"."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from mitmproxy.test import taddons

from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.proxy.addon import KlockProxy
from tests.fakes import FakeUpstream, StaticLocks
from tests.proxy.support import make_flow, run, status_of

LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: nocreate, namespace: default}
spec: {operations: [CREATE], matcher: {aura: red}}
"""
PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
def addon() -> Iterator[KlockProxy]:
    engine = Engine(load_locks_from_text(LOCK, source="test"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=FakeUpstream())  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        yield proxy


YAML_BOOL = b"apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {aura: yes}}\n"
JSON_NUMBER = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","labels":{"aura":1}}}'


@pytest.mark.parametrize(
    ("body", "ctype", "kind"),
    [(YAML_BOOL, "application/yaml", "boolean"), (JSON_NUMBER, "application/json", "number")],
)
async def test_a_label_that_is_not_a_string_is_a_400(
    addon: KlockProxy, caplog: pytest.LogCaptureFixture, body: bytes, ctype: str, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    flow = make_flow("POST", PODS, body, ctype)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert f"metadata.labels['aura'] must be a string, not a {kind}" in status["message"]
    assert "internal error" not in caplog.text
    assert "Traceback" not in caplog.text
