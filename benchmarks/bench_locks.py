"""Many Locks: start time, request latency while Locks change, and watch latency.

Run: ``python benchmarks/bench_locks.py [--locks 10000] [--seconds 6] [--rounds 2]``. Not
collected by pytest.

The sandbox API server runs in its own process, ``klockproxy serve`` in another (as users run
it: re-executed under ``python -O``), the load generator in this one. Measured, in one run:

- **start**: process start to the ready line of ``klockproxy serve`` with a lock file of 1
  Lock, of ``--locks`` Locks as one YAML document each, and as one ``kind: List`` document;
  the lock file plus the cluster source in every case.
- **request latency while Locks change**: GET of one object through the proxy (1 and 4
  clients), side by side: with nothing changing, and from a rewrite of the lock file until
  the proxy logged the reload it caused: the same Locks (re-read and re-parsed, nothing
  rebuilt) or every Lock changed (re-parsed, and the whole engine rebuilt). Goal (issue 12):
  no request more than 20 ms over the p99 with nothing changing.
- **watch latency**: a Lock created or deleted straight in the API server (not through the
  proxy) until the proxy enforces it, probed with dry-run PATCHes through the proxy.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import (
    SANDBOX_CHILD,
    Child,
    Target,
    cpu_seconds,
    kubeconfig_token_and_ca,
    machine,
    seed,
    serve_argv,
    ssl_for,
    start_child,
)

from klockproxy.crd import crd_object

OPEN_NS = "bench-open"
WATCH_NS = "bench-watch"
LOCK_NAMESPACES = 100
GOAL_MS = 20.0


def lock_doc(i: int, operations: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"operations": operations, "matcher": {"app": f"app-{i}"}}
    if i % 10 == 0:
        spec["matcher"]["env"] = "^dev"
    if i % 7 == 0:
        spec["exclusive"] = {"name": "deployer"}
    return {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": f"lock-{i}", "namespace": f"bench-ns-{i % LOCK_NAMESPACES}"},
        "spec": spec,
    }


def lock_text(count: int, operations: list[str], *, as_list: bool = False) -> str:
    docs = [lock_doc(i, operations) for i in range(count)]
    if as_list:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})
    return yaml.safe_dump_all(docs)


def print_starts(
    starts: list[tuple[str, list[float], list[float], tuple[float, float]]],
    load_before: float,
    rounds: int,
) -> None:
    """The start table: medians of ``rounds`` starts (with their range when more than one)."""
    print(f"\n{rounds} start(s) each; 1-min load average before: {load_before:.2f}\n")
    print(
        "| lock file | `klockproxy serve` start to ready: wall (s), median (range) | CPU (s), "
        "median | loading the Locks alone, in process: wall (s) | CPU (s) |\n|---|---|---|---|---|"
    )
    for label, walls, cpus, (load_wall, load_cpu) in starts:
        spread = f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else ""
        print(
            f"| {label} | {statistics.median(walls):.2f}{spread} | "
            f"{statistics.median(cpus):.2f} | {load_wall:.2f} | {load_cpu:.2f} |"
        )


def load_seconds(path: Path) -> tuple[float, float]:
    """Seconds to load the lock file into a ready engine in this process (parse, validate,
    build), without the process start around it: (wall, CPU)."""
    from klockproxy.cluster.lock_sources import FileLockSource, LockSet

    async def go() -> tuple[float, float]:
        lock_set = LockSet([FileLockSource([path])])
        t0, c0 = time.perf_counter(), time.process_time()
        await lock_set.start()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        await lock_set.stop()
        return seconds, cpu

    return asyncio.run(go())


def start_proxy(
    work: Path, name: str, admin_kc: str, lock_file: Path
) -> tuple[Child, float, float]:
    """``klockproxy serve`` with the lock file and the cluster: (child, seconds to ready,
    CPU seconds to ready)."""
    t0 = time.perf_counter()
    argv = serve_argv(
        admin_kc,
        lock_file,
        work / f"{name}.kubeconfig",
        work / "state",
        log_level="INFO",
        extra_locks=("cluster",),
    )
    # The ready line on stdout; the log (INFO: the reload lines) to a file.
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"klockproxy serve did not start (see {work / name}.log)")
    # CPU time to ready too: on a shared machine it moves far less than the wall time.
    return Child(proc, line), time.perf_counter() - t0, cpu_seconds(proc.pid)


@dataclass
class Window:
    what: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    reloads: int
    cpu_s: float
    seconds: float


async def get_load(
    target: Target, clients: int, start: Callable[[], None], done: Callable[[], bool]
) -> tuple[list[float], float]:
    """GET one configmap with ``clients`` workers from ``start()`` (called once the
    connections are warm) until ``done()``: latencies and req/s."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients, ssl=target.ssl)
    headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/json"}
    url = f"{target.url}/api/v1/namespaces/{OPEN_NS}/configmaps/cm-1"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def warm() -> None:
            async with session.get(url) as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(clients * 3)))
        start()

        async def worker() -> None:
            while not done():
                t0 = time.perf_counter()
                async with session.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"GET answered {r.status}")
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    return latencies, len(latencies) / elapsed


def reload_lines(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("reloaded ") + text.count("Locks unchanged")


async def window(
    target: Target,
    what: str,
    clients: int,
    seconds: float,
    lock_file: Path,
    text: str | None,
    log: Path,
) -> Window:
    """GET load for ``seconds``, or, with ``text``, from writing it to the lock file (as
    ``gen > file`` does) until the proxy logged the reload it causes (+0.2 s)."""
    before = reload_lines(log)
    cpu0 = cpu_seconds(target.pid)
    t0 = time.perf_counter()
    finished: list[float] = []

    def start() -> None:
        nonlocal t0
        t0 = time.perf_counter()
        if text is not None:
            lock_file.write_text(text)

    def done() -> bool:
        now = time.perf_counter()
        if text is None:
            return now - t0 > seconds
        if not finished and reload_lines(log) > before:
            finished.append(now)
        return (bool(finished) and now - finished[0] > 0.2) or now - t0 > 120

    latencies, rps = await get_load(target, clients, start, done)
    lat = sorted(latencies) or [float("nan")]
    return Window(
        what,
        clients,
        rps,
        1000 * lat[len(lat) // 2],
        1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        1000 * lat[-1],
        reload_lines(log) - before,
        cpu_seconds(target.pid) - cpu0,
        (finished[0] if finished else time.perf_counter()) - t0,
    )


async def api_call(
    target: Target, method: str, path: str, body: Any = None, content_type: str = ""
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.request(method, target.url + path, json=body, ssl=target.ssl) as r,
    ):
        return r.status, await r.json(content_type=None)


async def install_crd_and_watch_target(direct: Target) -> None:
    status, _ = await api_call(
        direct, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd_object()
    )
    if status not in (201, 409):
        raise RuntimeError(f"CRD: {status}")
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WATCH_NS}}
    await api_call(direct, "POST", "/api/v1/namespaces", ns)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "target", "labels": {"aura": "green"}},
    }
    await api_call(direct, "POST", f"/api/v1/namespaces/{WATCH_NS}/configmaps", cm)
    for _ in range(100):
        status, _ = await api_call(direct, "GET", "/apis/klock.rnemet.dev/v1/locks")
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the Lock CRD is not served")


async def until(probe: Callable[[], Awaitable[bool]], limit: float = 30.0) -> float:
    t0 = time.perf_counter()
    while not await probe():
        if time.perf_counter() - t0 > limit:
            raise RuntimeError("the proxy never followed the change")
    return time.perf_counter() - t0


async def watch_latency(
    direct: Target, proxy: Target, times: int
) -> tuple[list[float], list[float]]:
    """Seconds from a Lock created (deleted) in the API server until the proxy enforces it
    (stops enforcing it), probed with dry-run PATCHes of the object it locks."""
    locks = f"/apis/klock.rnemet.dev/v1/namespaces/{WATCH_NS}/locks"
    patch_path = f"/api/v1/namespaces/{WATCH_NS}/configmaps/target?dryRun=All"
    headers = {
        "Authorization": f"Bearer {proxy.token}",
        "Content-Type": "application/merge-patch+json",
    }
    body = b'{"metadata":{"annotations":{"probe":"x"}}}'
    created: list[float] = []
    deleted: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as s:

        async def status() -> int:
            async with s.patch(proxy.url + patch_path, data=body, ssl=proxy.ssl) as r:
                await r.read()
                return r.status

        async def locked() -> bool:
            return await status() == 403

        async def unlocked() -> bool:
            return await status() == 200

        for i in range(times):
            lock = {
                "apiVersion": "klock.rnemet.dev/v1",
                "kind": "Lock",
                "metadata": {"name": f"w-{i}"},
                "spec": {"operations": ["UPDATE"], "matcher": {"aura": "green"}},
            }
            code, _ = await api_call(direct, "POST", locks, lock)
            if code != 201:
                raise RuntimeError(f"creating the Lock: {code}")
            created.append(await until(locked))
            code, _ = await api_call(direct, "DELETE", f"{locks}/w-{i}")
            if code != 200:
                raise RuntimeError(f"deleting the Lock: {code}")
            deleted.append(await until(unlocked))
    return created, deleted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locks", type=int, default=10_000, help="Locks in the big file")
    parser.add_argument("--seconds", type=float, default=6.0, help="per load window")
    parser.add_argument("--starts", type=int, default=1, help="starts of each lock file")
    parser.add_argument(
        "--starts-only", action="store_true", help="measure the starts, not the reloads"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the load windows")
    parser.add_argument("--watch-times", type=int, default=10, help="Locks created for watch")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="klockproxy-bench-locks-"))
    children: list[Child] = []
    try:
        sb = start_child([sys.executable, "-c", SANDBOX_CHILD, str(work / "sandbox")])
        children.append(sb)
        sandbox_url, admin_kc = sb.first_line.split()
        token, sandbox_ca = kubeconfig_token_and_ca(Path(admin_kc))
        direct = Target("direct", sandbox_url, token, ssl_for(sandbox_ca), sb.proc.pid)
        asyncio.run(seed(direct))
        asyncio.run(install_crd_and_watch_target(direct))

        n = args.locks
        small = work / "one.yaml"
        # No DELETE Locks: each namespace with one has the ownership index watch every kind
        # in it (its cost is measured by bench_ownership.py); here only the Locks count.
        small.write_text(lock_text(1, ["UPDATE", "CREATE"]))
        big = work / "many.yaml"
        texts = [lock_text(n, ["UPDATE", "CREATE"]), lock_text(n, ["UPDATE"])]
        big.write_text(texts[0])
        as_list = work / "list.yaml"
        as_list.write_text(lock_text(n, ["UPDATE", "CREATE"], as_list=True))

        starts: list[tuple[str, list[float], list[float], tuple[float, float]]] = []
        for name, path, label in [
            ("one", small, "1 Lock"),
            ("list", as_list, f"{n:,} Locks, one `kind: List` document"),
            ("many", big, f"{n:,} Locks, one document each"),
        ]:
            loading = load_seconds(path)
            walls, cpus = [], []
            for attempt in range(args.starts):
                child, seconds, cpu = start_proxy(work, name, admin_kc, path)
                walls.append(seconds)
                cpus.append(cpu)
                if name != "many" or attempt < args.starts - 1:
                    child.stop()
            starts.append((label, walls, cpus, loading))
            children.append(child)
            proxy_child = child
        if args.starts_only:
            print_starts(starts, load_before, args.starts)
            return 0
        kp_token, kp_ca = kubeconfig_token_and_ca(work / "many.kubeconfig")
        kp_url = proxy_child.first_line.split()[3]
        proxy = Target("klockproxy", kp_url, kp_token, ssl_for(kp_ca), proxy_child.proc.pid)
        log = work / "many.log"

        windows: list[Window] = []

        async def load_windows() -> None:
            for _ in range(args.rounds):
                for clients in (1, 4):
                    for what, text in [
                        ("nothing changes", None),
                        ("the file rewritten, same Locks", texts[0]),
                        ("every Lock changes", texts[1]),
                        ("nothing changes", None),
                        ("every Lock changes back", texts[0]),
                    ]:
                        windows.append(
                            await window(proxy, what, clients, args.seconds, big, text, log)
                        )

        asyncio.run(load_windows())
        created, deleted = asyncio.run(watch_latency(direct, proxy, args.watch_times))

        print(
            f"\nMachine: {machine()}; 1-min load average at start: {load_before:.2f} (a shared "
            f"machine); {args.seconds:.0f} s per window, {args.rounds} rounds.\n"
        )
        print_starts(starts, load_before, args.starts)
        print(
            f"\nGET of one object through the proxy with {n:,} Locks loaded, while nothing "
            "changes, and from the lock file's rewrite until the proxy logged the reload "
            "(the window; the proxy reads a file once it held still for one poll, 0.5 s).\n"
        )
        print(
            "| while | clients | req/s | p50 (ms) | p99 (ms) | max (ms) | max over steady p99 "
            "(ms) | window (s) | reloads |\n|---|---|---|---|---|---|---|---|---|"
        )
        for clients in (1, 4):
            steady = [w for w in windows if w.clients == clients and w.what == "nothing changes"]
            steady_p99 = statistics.median(w.p99_ms for w in steady) if steady else 0.0
            by_what: dict[str, list[Window]] = {}
            for w in windows:
                if w.clients == clients:
                    by_what.setdefault(w.what, []).append(w)
            for what, ws in by_what.items():
                worst = max(w.max_ms for w in ws)
                print(
                    f"| {what} | {clients} | {statistics.median(w.rps for w in ws):.0f} | "
                    f"{statistics.median(w.p50_ms for w in ws):.2f} | "
                    f"{statistics.median(w.p99_ms for w in ws):.2f} | {worst:.1f} | "
                    f"{worst - steady_p99:+.1f} | {statistics.median(w.seconds for w in ws):.1f} | "
                    f"{sum(w.reloads for w in ws)} |"
                )
        print(
            "\n| Lock made in the API server (not through the proxy) | p50 (ms) | max (ms) |"
            "\n|---|---|---|"
        )
        for what, values in (
            ("created, until enforced", created),
            ("deleted, until lifted", deleted),
        ):
            print(f"| {what} | {1000 * statistics.median(values):.1f} | {1000 * max(values):.1f} |")
    finally:
        for child in reversed(children):
            child.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
