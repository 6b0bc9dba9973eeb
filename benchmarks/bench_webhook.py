"""AdmissionReviews per second and latency of ``klockproxy webhook`` against the floor.

Run: ``python benchmarks/bench_webhook.py [--seconds S] [--clients 1 8]``. Not collected by
pytest.

Two HTTPS servers on 127.0.0.1 with the same certificate, side by side:

* the floor: an aiohttp handler that only parses the same AdmissionReview JSON and answers
  ``allowed: true`` (what any Python webhook pays for TLS, HTTP and JSON);
* ``klockproxy webhook`` (``WebhookServer``, as the command runs it) with 100 or 10,000 Locks
  in the review's namespace (shaped as in bench_engine.py: each Lock its own application,
  one matching the object and exempting the caller).

Reviews: an UPDATE of a small Pod, and an UPDATE of a ConfigMap of 1 MB (object and
oldObject: a 2 MB review), both by the Lock's exempt account, so that every review is
judged in full (parsed, mapped, the engine run on old and new labels, owner references
compared) and allowed, like the floor's answer. No review needs an API server lookup.

The load comes from a separate process (aiohttp client, keep-alive, N concurrent clients,
a warm-up second, then S seconds measured), floor and webhook alternating for R rounds;
each figure is the median of its rounds. Goals (issue 9): at least 0.8x the floor's
throughput, and a p50 decision overhead (webhook p50 - floor p50, one client) under 1 ms for
the small Pod.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMESPACE = "shop"
EXEMPT = "system:serviceaccount:shop:deployer"


# ---------------------------------------------------------------------------------------------
# The load (run in a child process: ``--client``)


async def _load(url: str, ca: str, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    ctx = ssl.create_default_context(cafile=ca)
    latencies: list[float] = []
    sent = 0
    connector = aiohttp.TCPConnector(ssl=ctx, limit=clients)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(until: float, record: bool) -> None:
            nonlocal sent
            while True:
                start = time.perf_counter()
                if start >= until:
                    return
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status != 200 or b'"allowed":true' not in answer.replace(b" ", b""):
                        raise SystemExit(f"unexpected answer {resp.status}: {answer[:200]!r}")
                sent += 1
                if record:
                    latencies.append(time.perf_counter() - start)

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(warm, False) for _ in range(clients)))
        begin = time.perf_counter()
        await asyncio.gather(*(worker(begin + seconds, True) for _ in range(clients)))
        elapsed = time.perf_counter() - begin
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "count": len(latencies),
        # Every request, the warm-up's included: the server's CPU is measured over all.
        "sent": sent,
    }


def client_main(argv: list[str]) -> None:
    url, ca, body_file, clients, seconds = argv
    body = Path(body_file).read_bytes()
    result = asyncio.run(_load(url, ca, body, int(clients), float(seconds)))
    print(json.dumps(result))


def measure(
    server: Any, url: str, ca: Path, body: Path, clients: int, seconds: float
) -> dict[str, Any]:
    """Load ``url`` from a child process; the figures, with the CPU the server's thread
    spent per request (``server``: the LoopThread serving ``url``)."""
    cpu_before = server.cpu_seconds()
    out = subprocess.run(
        [sys.executable, __file__, "--client", url, str(ca), str(body), str(clients), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    result["cpu_us"] = 1e6 * (server.cpu_seconds() - cpu_before) / max(1, result["sent"])
    return result


# ---------------------------------------------------------------------------------------------
# The servers


class FloorServer:
    """aiohttp: parse the JSON, answer ``allowed: true`` with the uid."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.url = ""
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def validate(request: web.Request) -> web.Response:
            review = json.loads(await request.read())
            answer = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True},
            }
            return web.Response(
                body=json.dumps(answer, separators=(",", ":")).encode(),
                content_type="application/json",
            )

        app = web.Application(client_max_size=3 * 1024 * 1024)
        app.router.add_post("/validate", validate)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class StaticLocks:
    """A lock source that is ready at once with a fixed set (no files, no API server)."""

    def __init__(self, locks: tuple[Any, ...]) -> None:
        self.locks = locks
        self.invalid: tuple[Any, ...] = ()
        self.ready = True
        self.on_change: Callable[[], None] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class NoLookups:
    """The benchmark's reviews never need the API server: any lookup is a bug."""

    server = "https://nowhere.invalid"
    has_own_credentials = False

    async def get_object(self, path: str, headers: Any) -> Any:
        raise RuntimeError(f"unexpected lookup {path}")

    async def list_objects(self, path: str, headers: Any, *a: Any, **k: Any) -> Any:
        raise RuntimeError(f"unexpected lookup {path}")

    async def self_subject_review(self, headers: Any) -> Any:
        raise RuntimeError("unexpected SelfSubjectReview")

    async def close(self) -> None:
        return None


def build_locks(count: int) -> tuple[Any, ...]:
    from klockproxy.core.locks import load_locks_from_objects

    docs: list[object] = []
    for i in range(count - 1):
        matcher = {"app": f"app-{i}"} if i % 10 else {"app": f"app-{i}", "env": "^dev"}
        docs.append(_lock(f"lock-{i}", matcher))
    docs.append(_lock("the-app", {"app": "checkout"}, exclusive={"name": "deployer"}))
    return tuple(load_locks_from_objects(docs, source="bench", default_namespace=NAMESPACE))


def _lock(name: str, matcher: dict[str, str], **extra: Any) -> object:
    return {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"operations": ["UPDATE", "DELETE"], "matcher": matcher, **extra},
    }


# ---------------------------------------------------------------------------------------------
# The reviews


def review(kind: str, resource: str, obj: dict[str, Any]) -> bytes:
    meta = obj["metadata"]
    request = {
        "uid": "0f5c3a1e-7a4e-4b61-9c7e-2b8f0e6f1a01",
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": resource},
        "requestKind": {"group": "", "version": "v1", "kind": kind},
        "requestResource": {"group": "", "version": "v1", "resource": resource},
        "name": meta["name"],
        "namespace": NAMESPACE,
        "operation": "UPDATE",
        "userInfo": {
            "username": EXEMPT,
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
        },
        "object": obj,
        "oldObject": obj,
        "dryRun": False,
        "options": {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


def small_pod() -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "checkout-5d9f7c6b8-x2x9q",
            "namespace": NAMESPACE,
            "uid": "6d1f0b8e-1f2a-4c3b-9d4e-5f6a7b8c9d0e",
            "resourceVersion": "4242",
            "labels": {"app": "checkout", "tier": "web", "pod-template-hash": "5d9f7c6b8"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-5d9f7c6b8",
                 "uid": "1a2b3c4d", "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}
            ],
            "serviceAccountName": "default",
        },
        "status": {"phase": "Running"},
    }  # fmt: skip
    return review("Pod", "pods", pod)


def big_configmap() -> bytes:
    data = {f"key-{i:04d}": "x" * 1000 for i in range(1024)}  # ~1 MB
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "checkout-assets", "namespace": NAMESPACE, "uid": "c1",
                     "resourceVersion": "7", "labels": {"app": "checkout"}},
        "data": data,
    }  # fmt: skip
    return review("ConfigMap", "configmaps", cm)


# ---------------------------------------------------------------------------------------------


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


@dataclass
class Row:
    review: str
    locks: str
    clients: int
    floor: dict[str, Any]
    webhook: dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--locks", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="only the reviews whose name contains this (small, 1 MB)"
    )
    args = parser.parse_args()

    from klockproxy.cluster.certs import CertificateAuthority
    from klockproxy.cluster.lock_sources import LockSet
    from klockproxy.loop_thread import LoopThread
    from klockproxy.webhook.server import FileCerts, WebhookServer, WebhookSettings

    work = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    ca = CertificateAuthority.create("bench CA")
    cert, key = ca.issue_server(["127.0.0.1"])
    (work / "ca.crt").write_bytes(ca.cert_pem)
    (work / "tls.crt").write_bytes(cert)
    (work / "tls.key").write_bytes(key)
    bodies = {"small Pod": small_pod(), "1 MB ConfigMap": big_configmap()}
    bodies = {name: body for name, body in bodies.items() if args.only in name}
    for name, body in bodies.items():
        (work / f"{len(name)}.json").write_bytes(body)

    floor_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    floor_ctx.load_cert_chain(work / "tls.crt", work / "tls.key")
    floor = LoopThread(FloorServer(floor_ctx)).start()
    load = os.getloadavg()[0]
    rows: list[Row] = []
    try:
        for count in args.locks:
            started = time.perf_counter()
            lock_set = LockSet([StaticLocks(build_locks(count))])  # type: ignore[list-item]
            server = WebhookServer(
                WebhookSettings(listen="127.0.0.1:0"),
                lock_set=lock_set,
                lookups=NoLookups(),
                certs=FileCerts(str(work / "tls.crt"), str(work / "tls.key")),
            )
            hook = LoopThread(server).start()
            print(f"{count} locks loaded in {time.perf_counter() - started:.1f} s", flush=True)
            try:
                for name in bodies:
                    body_file = work / f"{len(name)}.json"
                    for clients in args.clients:
                        # Alternating rounds, each figure the median of its rounds: load on
                        # a shared machine shifts over time and hits both alike.
                        floors, hooks = [], []
                        for _ in range(args.rounds):
                            floors.append(measure(floor, floor.service.url + "/validate",
                                                  work / "ca.crt", body_file, clients,
                                                  args.seconds))  # fmt: skip
                            hooks.append(measure(hook, server.url + "/validate", work / "ca.crt",
                                                 body_file, clients, args.seconds))  # fmt: skip
                        f, w = median_of(floors), median_of(hooks)
                        rows.append(Row(name, f"{count:,}", clients, f, w))
                        print(f"  {name}, {clients} clients: floor {f['rps']:.0f}/s "
                              f"p50 {f['p50_ms']:.2f} ms; webhook {w['rps']:.0f}/s "
                              f"p50 {w['p50_ms']:.2f} ms", flush=True)  # fmt: skip
            finally:
                hook.stop()
    finally:
        floor.stop()

    print()
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, 1-min load average at start {load:.2f}"
    )
    print()
    print(
        "| review | locks | clients | floor req/s | webhook req/s | webhook / floor "
        "| p50 floor / webhook (ms) | p99 floor / webhook (ms) | p50 overhead (ms) "
        "| server CPU per review floor / webhook (µs) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, w = r.floor, r.webhook
        print(
            f"| {r.review} | {r.locks} | {r.clients} | {f['rps']:.0f} | {w['rps']:.0f} | "
            f"{w['rps'] / f['rps']:.2f} | {f['p50_ms']:.2f} / {w['p50_ms']:.2f} | "
            f"{f['p99_ms']:.2f} / {w['p99_ms']:.2f} | {w['p50_ms'] - f['p50_ms']:.2f} | "
            f"{f['cpu_us']:.0f} / {w['cpu_us']:.0f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
