"""The shared gateway under many users: ``klockproxy gateway`` vs local mode, in one run.

Run: ``python benchmarks/bench_gateway.py [--users 100] [--seconds 10]``. Not collected by
pytest.

Processes: the sandbox API server, ``klockproxy gateway`` (a lock file, a health port) and
``klockproxy serve`` (the same lock file), each on its own interpreter. The sandbox gets
``--users`` service accounts (edit role in the namespace) and one TokenRequest token each.

- **Load**: every user is one client with its own kept-alive connection, all in parallel,
  each doing a mix of GET and covered PATCH (a Lock covers the namespace, so each PATCH reads
  the current object first) on its own ConfigMap. Through the gateway each user sends its own
  token; local mode has one identity, so every client there sends the proxy's token. Prints
  req/s and p50/p99 for both and the gateway/local ratios.
- **Identity cache hit cost**: ``IdentityResolver.resolve`` for headers already cached, in
  process (goal < 50 µs).
- **Reviews per token per TTL**: SelfSubjectReviews the gateway sent during the load (its
  ``/metrics``) divided by the number of users; the load is shorter than the 60 s TTL (goal 1).
- **Memory per connected user**: the gateway's RSS before the users connect and with every
  user's connection open and idle, divided by the number of users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NS = "bench-gw"
LOCK_FILE = f"""\
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {{name: freeze-red, namespace: {NS}}}
spec:
  operations: [UPDATE, DELETE]
  matcher: {{aura: red}}
"""

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


@dataclass
class Child:
    proc: subprocess.Popen[str]
    first_line: str

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_child(argv: list[str]) -> Child:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[:4]} did not start")
    return Child(proc, line)


def ssl_for(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


async def seed(url: str, admin_token: str, ca: ssl.SSLContext, users: int) -> list[str]:
    """The namespace, one ConfigMap per user, ``users`` service accounts and their tokens."""
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(ssl=ca, limit=20)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:

        async def post(path: str, body: dict[str, object]) -> dict[str, object]:
            async with s.post(url + path, data=json.dumps(body)) as r:
                data = await r.json()
                if r.status >= 300 and r.status != 409:
                    raise RuntimeError(f"POST {path}: {r.status} {data}")
                return dict(data)

        await post("/api/v1/namespaces", {"metadata": {"name": NS}})

        async def one(i: int) -> str:
            name = f"user-{i:03d}"
            await post(
                f"/api/v1/namespaces/{NS}/configmaps",
                {"metadata": {"name": f"cm-{i}"}, "data": {"n": "0"}},
            )
            await post(f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": name}})
            await post(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings",
                {
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "edit",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
                },
            )
            tr = await post(
                f"/api/v1/namespaces/{NS}/serviceaccounts/{name}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
            )
            status = tr.get("status")
            if not isinstance(status, dict):
                raise RuntimeError(f"TokenRequest for {name}: {tr}")
            return str(status["token"])

        return list(await asyncio.gather(*(one(i) for i in range(users))))


async def load(
    url: str, ca: ssl.SSLContext, tokens: list[str], seconds: float
) -> tuple[float, list[float]]:
    """Each token one client (own connection), all in parallel: GET and covered PATCH
    alternately on the client's own ConfigMap. Every client first makes one GET and one PATCH
    untimed (connections, the identity cache), then all run for ``seconds``.
    (req/s, latencies)."""
    latencies: list[float] = []
    warmed = 0
    all_warm = asyncio.Event()
    stop_at = 0.0
    t_start = 0.0

    async def call(s: aiohttp.ClientSession, path: str, n: int) -> None:
        if n % 2:
            async with s.get(path) as r:
                await r.read()
        else:
            async with s.patch(
                path,
                data=json.dumps({"data": {"n": str(n)}}),
                headers={"Content-Type": "application/merge-patch+json"},
            ) as r:
                await r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}")

    async def client(i: int, token: str) -> None:
        nonlocal warmed, stop_at, t_start
        conn = aiohttp.TCPConnector(ssl=ca, limit=1)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        path = f"{url}/api/v1/namespaces/{NS}/configmaps/cm-{i}"
        async with aiohttp.ClientSession(connector=conn, headers=headers) as s:
            await call(s, path, 1)
            await call(s, path, 2)
            warmed += 1
            if warmed == len(tokens):
                t_start = time.perf_counter()
                stop_at = t_start + seconds
                all_warm.set()
            await all_warm.wait()
            n = 2
            while time.perf_counter() < stop_at:
                n += 1
                t0 = time.perf_counter()
                await call(s, path, n)
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(i, t) for i, t in enumerate(tokens)))
    return len(latencies) / (time.perf_counter() - t_start), latencies


async def connect_idle(
    url: str, ca: ssl.SSLContext, tokens: list[str]
) -> list[aiohttp.ClientSession]:
    """One kept-alive connection per user, each having made one request, left open."""
    sessions = []
    for token in tokens:
        s = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca, limit=1),
            headers={"Authorization": f"Bearer {token}"},
        )
        async with s.get(f"{url}/api/v1/namespaces/{NS}/configmaps/cm-0") as r:
            await r.read()
        sessions.append(s)
    return sessions


def cache_hit_cost(rounds: int = 20000) -> float:
    """Microseconds per IdentityResolver.resolve of cached headers (in process)."""
    from klockproxy.cluster.identity import IdentityResolver
    from klockproxy.core.types import UserInfo

    class Reviewer:
        async def self_subject_review(self, headers: object) -> UserInfo:
            return UserInfo("u", "uid", ("g",))

    async def run() -> float:
        resolver = IdentityResolver(Reviewer())
        headers = [{"Authorization": f"Bearer token-{i:04d}-" + "x" * 800} for i in range(100)]
        for h in headers:
            await resolver.resolve(h)
        t0 = time.perf_counter()
        for i in range(rounds):
            await resolver.resolve(headers[i % 100])
        return (time.perf_counter() - t0) / rounds * 1e6

    return asyncio.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)] * 1000


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({model}), {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0, help="per target")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="klockproxy-bench-gw-"))
    children: list[Child] = []
    load_before = os.getloadavg()[0]
    try:
        sb = start_child([sys.executable, "-c", SANDBOX_CHILD, str(work / "sandbox")])
        children.append(sb)
        sandbox_url, admin_kc = sb.first_line.split()
        import yaml

        kc = yaml.safe_load(Path(admin_kc).read_text())
        admin_token = kc["users"][0]["user"]["token"]
        import base64

        sandbox_ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"])
        tokens = asyncio.run(seed(sandbox_url, admin_token, ssl_for(sandbox_ca), args.users))
        lock_file = work / "locks.yaml"
        lock_file.write_text(LOCK_FILE)

        gw = start_child(
            [sys.executable, "-m", "klockproxy", "--log-level", "WARNING", "gateway",
             "--kubeconfig", admin_kc, "--listen", "127.0.0.1:0", "--state-dir",
             str(work / "gw-state"), "--locks", str(lock_file), "--health-listen",
             "127.0.0.1:0"]
        )  # fmt: skip
        children.append(gw)
        m = re.search(r"serving on (\S+) .*trust the CA (\S+); health on (\S+)", gw.first_line)
        if not m:
            raise RuntimeError(f"gateway: {gw.first_line}")
        gw_url, gw_ca_path, gw_health = m.groups()
        gw_ca = ssl_for(Path(gw_ca_path).read_bytes())

        out = work / "local.kubeconfig"
        local = start_child(
            [sys.executable, "-m", "klockproxy", "--log-level", "WARNING", "serve",
             "--kubeconfig", admin_kc, "--listen", "127.0.0.1:0", "--locks", str(lock_file),
             "--write-kubeconfig", str(out), "--state-dir", str(work / "local-state")]
        )  # fmt: skip
        children.append(local)
        lk = yaml.safe_load(out.read_text())
        local_token = lk["users"][0]["user"]["token"]
        local_ca = ssl_for(
            base64.b64decode(lk["clusters"][0]["cluster"]["certificate-authority-data"])
        )
        local_url = local.first_line.split()[3]

        rss_idle = gw.rss_kb()
        sessions = asyncio.run(connect_idle(gw_url, gw_ca, tokens))
        time.sleep(1)
        rss_connected = gw.rss_kb()

        async def close_all() -> None:
            for s in sessions:
                await s.close()

        asyncio.run(close_all())

        def reviews() -> float:
            import urllib.request

            with urllib.request.urlopen(gw_health + "/metrics", timeout=30) as resp:
                text = resp.read().decode()
            found = re.search(
                r'^klockproxy_identity_reviews_total\{kind="selfsubjectreview",result="ok"\} '
                r"(\S+)$",
                text,
                re.M,
            )
            return float(found.group(1)) if found else 0.0

        reviews_before = reviews()
        t_reviews = time.perf_counter()
        gw_rps, gw_lat = asyncio.run(load(gw_url, gw_ca, tokens, args.seconds))
        reviews_after = reviews()
        reviews_span = time.perf_counter() - t_reviews
        local_rps, local_lat = asyncio.run(
            load(local_url, local_ca, [local_token] * len(tokens), args.seconds)
        )
        hit_us = cache_hit_cost()

        g50, g99 = percentile(gw_lat, 0.5), percentile(gw_lat, 0.99)
        l50, l99 = percentile(local_lat, 0.5), percentile(local_lat, 0.99)
        print(
            f"Machine: {machine()}; {args.users} users, {args.seconds:.0f} s per target; "
            f"1-min load average at start: {load_before:.2f}.\n"
        )
        print("| target | req/s | p50 | p99 |")
        print("|---|---|---|---|")
        print(f"| gateway ({args.users} tokens) | {gw_rps:.0f} | {g50:.1f} ms | {g99:.1f} ms |")
        print(f"| local mode (one identity) | {local_rps:.0f} | {l50:.1f} ms | {l99:.1f} ms |")
        print(f"| gateway / local | {gw_rps / local_rps:.2f} | {g50 / l50:.2f} | {g99 / l99:.2f} |")
        print()
        print(f"- identity cache hit: {hit_us:.1f} µs (goal < 50 µs)")
        # Reads are not reviewed (the API server authenticates them): the idle-connection
        # phase made none, so every token's first PATCH in the load is its first review.
        print(
            f"- identity reviews per token over warm-up and load ({reviews_span:.0f} s; the "
            f"TTL is 60 s): {(reviews_after - reviews_before) / len(tokens):.2f} (goal 1)"
        )
        print(
            f"- gateway RSS: {rss_idle / 1024:.1f} MB idle, {rss_connected / 1024:.1f} MB with "
            f"{len(tokens)} users connected: "
            f"{(rss_connected - rss_idle) / len(tokens):.0f} kB per connected user"
        )
        print(f"- median req/s per user through the gateway: {gw_rps / len(tokens):.1f}")
    finally:
        for child in reversed(children):
            child.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
