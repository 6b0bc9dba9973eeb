"""What the ownership index costs: memory and watch work per 10,000 objects.

Run: ``python benchmarks/bench_ownership.py [--objects N]``. Not collected by pytest.

A sandbox API server runs in its own process. N ConfigMaps (each with a 1 KiB data value the
metadata-only watches never carry, two labels and an owner reference to one of 100 owner
ConfigMaps) are created in a namespace that holds a DELETE Lock. Then, in this process:

- **sync**: an ``OwnershipIndex`` (the proxy's) discovers the kinds, lists every kind of that
  namespace and every cluster-scoped kind as metadata only, and watches them: wall time and
  CPU time of this process until it is synced;
- **memory**: Python heap held by the index once synced (tracemalloc, after a collection),
  and the process's RSS growth, per object;
- **watch**: a separate process relabels every object once (N PATCHes, 8 at a time); the
  CPU time this process spends applying the N MODIFIED events, per event, and the wall time
  until the index holds the last one.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp
import yaml

from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import Upstream, UpstreamConfig
from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.ownership import Node

NS = "bench"
OWNERS = 100
CONCURRENCY = 16

SANDBOX_CHILD = """
import sys, signal
from pathlib import Path
from klockproxy.sandbox.server import SandboxThread
sb = SandboxThread(state_dir=Path(sys.argv[1])).start()
kc = sb.write_kubeconfig(Path(sys.argv[1]) / "admin.kubeconfig")
print(sb.url, kc, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
sb.stop()
"""

# Relabels objects 0..N-1 (argv: url token ca ns count concurrency); prints "done".
PATCH_CHILD = """
import asyncio, json, ssl, sys
import aiohttp
url, token, ca, ns, count, conc = sys.argv[1:7]
async def main():
    ctx = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {token}",
               "Content-Type": "application/merge-patch+json"}
    body = json.dumps({"metadata": {"labels": {"round": "2"}}}).encode()
    queue = list(range(int(count)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async def worker():
            while queue:
                i = queue.pop()
                path = f"{url}/api/v1/namespaces/{ns}/configmaps/obj-{i}"
                async with s.patch(path, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
        await asyncio.gather(*(worker() for _ in range(int(conc))))
    print("done", flush=True)
asyncio.run(main())
"""

LOCK = f"""
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {{name: keep, namespace: {NS}}}
spec: {{operations: [DELETE], matcher: {{aura: red}}}}
"""


def deep_size(root: object) -> int:
    """Bytes held by ``root`` and everything it references (each object counted once)."""
    seen: set[int] = set()
    todo = [root]
    total = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            todo.extend(obj)
        elif hasattr(obj, "__slots__"):
            todo.extend(getattr(obj, name) for name in obj.__slots__ if hasattr(obj, name))
        elif hasattr(obj, "__dict__"):
            todo.append(vars(obj))
    return total


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def populate(url: str, token: str, ctx: ssl.SSLContext, count: int) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:

        async def post(path: str, body: dict[str, object]) -> dict[str, object]:
            async with s.post(url + path, data=json.dumps(body), headers=headers) as r:
                data: dict[str, object] = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"POST {path}: {r.status} {data}")
                return data

        await post("/api/v1/namespaces", {"metadata": {"name": NS}})
        cms = f"/api/v1/namespaces/{NS}/configmaps"
        owners = []
        for i in range(OWNERS):
            created = await post(cms, {"metadata": {"name": f"owner-{i}"}})
            meta = created["metadata"]
            assert isinstance(meta, dict)
            owners.append({"apiVersion": "v1", "kind": "ConfigMap", "name": meta["name"],
                           "uid": meta["uid"]})  # fmt: skip
        queue = list(range(count))
        payload = "x" * 1024

        async def worker() -> None:
            while queue:
                i = queue.pop()
                meta = {
                    "name": f"obj-{i}",
                    "labels": {"aura": "red" if i % 10 == 0 else "blue", "round": "1"},
                    "ownerReferences": [owners[i % OWNERS]],
                }
                await post(cms, {"metadata": meta, "data": {"blob": payload}})

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def bench(count: int) -> list[tuple[str, str]]:
    work = Path(tempfile.mkdtemp(prefix="bench-ownership-"))
    proc = subprocess.Popen(
        [sys.executable, "-c", SANDBOX_CHILD, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url, kubeconfig = proc.stdout.readline().split()
        config = yaml.safe_load(Path(kubeconfig).read_text())
        token = config["users"][0]["user"]["token"]
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
        (work / "ca.pem").write_bytes(ca)
        (work / "token").write_text(token)
        ctx = ssl.create_default_context(cadata=ca.decode())
        started = time.perf_counter()
        await populate(url, token, ctx, count)
        print(f"created {count + OWNERS} objects in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)  # fmt: skip

        upstream = Upstream(
            UpstreamConfig(url, ca_file=str(work / "ca.pem"), token_file=str(work / "token"))
        )
        index = OwnershipIndex(upstream)
        gc.collect()
        tracemalloc.start()
        heap0 = tracemalloc.get_traced_memory()[0]
        rss0 = rss_kb()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        index.follow(Engine(load_locks_from_text(LOCK, source="bench")))
        await index.start()
        if not await index.wait_synced(600):
            raise RuntimeError(f"index never synced: {index.progress()}")
        sync_wall, sync_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap0
        rss = rss_kb() - rss0
        tracemalloc.stop()
        objects = len(index.graph)
        watches = index.progress()

        graph_size = deep_size(index.graph)
        # Count the relabels as the index applies them (polling the graph would cost CPU).
        seen = [0]
        upsert = index.graph.upsert

        def counting(node: Node) -> None:
            if node.labels.get("round") == "2":
                seen[0] += 1
            upsert(node)

        index.graph.upsert = counting  # type: ignore[method-assign]

        def relabeled() -> int:
            return seen[0]

        patcher = subprocess.Popen(
            [sys.executable, "-c", PATCH_CHILD, url, token, str(work / "ca.pem"), NS,
             str(count), "8"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        wall1, cpu1 = time.perf_counter(), time.process_time()
        deadline = wall1 + 900
        while relabeled() < count:
            if time.perf_counter() > deadline:
                raise RuntimeError("the index never saw every relabel")
            await asyncio.sleep(0.05)
        watch_wall, watch_cpu = time.perf_counter() - wall1, time.process_time() - cpu1
        patcher.wait(60)
        await index.stop()
        await upstream.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    per10k = 10_000 / objects
    return [
        ("objects indexed (all kinds, cluster-scoped included)", f"{objects}"),
        ("watches", watches),
        ("sync: wall time", f"{sync_wall:.2f} s"),
        ("sync: CPU time of the index's process", f"{sync_cpu:.2f} s"),
        ("memory: the graph (deep size of nodes and edges)", f"{graph_size / 1e6:.1f} MB"),
        ("memory: the graph per 10,000 objects", f"{graph_size * per10k / 1e6:.1f} MB"),
        ("memory: Python heap growth, all of it (discovery, TLS, buffers)", f"{heap / 1e6:.1f} MB"),
        ("memory: RSS growth, all of it", f"{rss / 1e3:.1f} MB"),
        (f"watch: {count} relabels applied, wall time", f"{watch_wall:.2f} s"),
        ("watch: CPU time per 10,000 events", f"{watch_cpu * 10_000 / count:.2f} s"),
        ("watch: CPU time per event", f"{watch_cpu / count * 1e6:.0f} µs"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    rows = asyncio.run(bench(args.objects))
    print(f"\n{platform.python_version()} on {os.cpu_count()} CPUs, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
