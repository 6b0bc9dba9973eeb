"""What klockproxy costs on the wire: sandbox direct vs bare mitmproxy vs klockproxy.

Run: ``python benchmarks/bench_proxy.py [--seconds S]``. Not collected by pytest.

Three processes are started (each on its own interpreter, so they do not share a GIL with the
load generator): the sandbox API server, a bare mitmproxy reverse proxy in front of it
(the same embedded ``Master`` and addons as ``klockproxy serve``, with a no-op addon: the floor
every mitmproxy addon stands on; run as mitmdump runs it, or under ``python -O`` with
``--optimize-bare``), and ``klockproxy serve`` with a lock file (which re-executes itself under
``python -O``, as it does for every user); beside them stock ``mitmdump`` (``DumpMaster`` with
all its default addons, ``stream_large_bodies`` set so that watches flow; ``--no-stock`` leaves
it out), which is what "mitmproxy" means to most people. One client
process (aiohttp, HTTP/1.1 keep-alive) measures, for each target:

- GET of one object, LIST of 100 configmaps,
- PATCH in a namespace no lock covers (the proxy skips all work),
- PATCH that a lock covers but allows (the proxy reads the current object first),

with 1 client and with 16 concurrent clients: req/s and p50/p99 latency; "added" latency is
the proxied p50/p99 minus the direct one at the same concurrency. Also the CPU time each proxy
process spent per request (from /proc): on a shared machine it moves much less than req/s,
which depends on what else got the cores. Memory: RSS of each proxy idle, with 500 watches
opened as kubectl opens them, and with 500 more that each start with 100 ADDED events (RSS as
measured with the watches open, not a sum). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import ssl
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPEN_NS = "bench-open"
LOCKED_NS = "bench-locked"
LIST_SIZE = 100
# Bare pods: one per worker (a worker's i % 100 is its own), or covered writes would conflict.
PODS = 100
WATCHES = 500
WARM_WATCHES = 100

LOCK_FILE = f"""\
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {{name: freeze-red, namespace: {LOCKED_NS}}}
spec:
  operations: [UPDATE, DELETE]
  matcher: {{aura: red}}
"""

# ---------------------------------------------------------------------------------------------
# Child processes


SANDBOX_CHILD = """
import sys, time, signal
from pathlib import Path
from klockproxy.sandbox.server import SandboxThread
# "--http2": behind the sandbox's HTTP/2 front, as a real API server speaks h2.
sb = SandboxThread(state_dir=Path(sys.argv[1]), http2="--http2" in sys.argv[2:]).start()
kc = sb.write_kubeconfig(Path(sys.argv[1]) / "admin.kubeconfig")
print(sb.url, kc, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
sb.stop()
"""

BARE_CHILD = """
import asyncio, sys, signal
from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

class NoOp:
    def request(self, flow): pass
    def responseheaders(self, flow):
        flow.response.stream = True   # klockproxy streams too; same work per response

async def main(upstream, ca, pem, confdir):
    opts = options.Options(mode=[f"reverse:{upstream}"], listen_host="127.0.0.1",
                           listen_port=0, confdir=confdir)
    m = Master(opts)
    ps = proxyserver.Proxyserver()
    class Ready:
        def running(self):
            port = ps.listen_addrs()[0][1]
            print(f"https://127.0.0.1:{port}", flush=True)
    m.addons.add(core.Core(), ps, next_layer.NextLayer(), tlsconfig.TlsConfig(), NoOp(), Ready())
    m.options.update(certs=[f"*={pem}"], upstream_cert=False, connection_strategy="lazy",
                     ssl_verify_upstream_trusted_ca=ca)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, m.shutdown)
    await m.run()

asyncio.run(main(*sys.argv[1:]))
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


def start_child(argv: list[str], env: dict[str, str] | None = None) -> Child:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[:3]} did not start")
    return Child(proc, line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mitmdump(upstream: str, ca_file: Path, pem: Path, confdir: Path) -> tuple[Child, str]:
    """Stock mitmdump (DumpMaster, every default addon). ``stream_large_bodies`` is set: without
    it mitmdump buffers every response and an idle watch never gets its headers."""
    exe = Path(sys.executable).parent / "mitmdump"
    port = free_port()
    proc = subprocess.Popen(
        [
            str(exe if exe.exists() else shutil.which("mitmdump")),
            "--mode",
            f"reverse:{upstream}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={confdir}",
            "--set",
            f"certs=*={pem}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={ca_file}",
            "--set",
            "stream_large_bodies=1",
            "--set",
            "termlog_verbosity=warn",
            "--set",
            "flow_detail=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Child(proc, ""), f"https://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mitmdump did not start")


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class Target:
    name: str
    url: str
    token: str
    ssl: ssl.SSLContext
    # The process whose CPU time is charged per request (the proxy; the sandbox for direct).
    pid: int | None = None


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU time of the target's process per request


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ssl_for(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    return ctx


async def run_load(
    target: Target,
    make: Callable[[aiohttp.ClientSession, str, int], Awaitable[None]],
    concurrency: int,
    seconds: float,
) -> tuple[float, list[float], float]:
    """Drive ``make`` with ``concurrency`` workers for ``seconds``: (req/s, latencies in s,
    CPU seconds of the target's process per request)."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=target.ssl)
    headers = {"Authorization": f"Bearer {target.token}", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # Warm up: connections, caches (the proxy's identity cache included).
        for i in range(concurrency * 3):
            await make(session, target.url, i)
        stop_at = time.perf_counter() + seconds
        counter = 0

        async def worker(wid: int) -> None:
            nonlocal counter
            while time.perf_counter() < stop_at:
                counter += 1
                t0 = time.perf_counter()
                await make(session, target.url, counter * 100 + wid)
                latencies.append(time.perf_counter() - t0)

        cpu_start = cpu_seconds(target.pid)
        t_start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t_start
        cpu = cpu_seconds(target.pid) - cpu_start
    return len(latencies) / elapsed, latencies, cpu / max(1, len(latencies))


def summarize(rounds: list[tuple[float, list[float], float]]) -> Result:
    """Median req/s and CPU per request over the rounds; percentiles over every request of
    every round."""
    latencies = sorted(lat for _, lats, _ in rounds for lat in lats)
    return Result(
        rps=statistics.median(rps for rps, _, _ in rounds),
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        cpu_us=statistics.median(cpu for _, _, cpu in rounds) * 1e6,
    )


async def _check(resp: aiohttp.ClientResponse, what: str) -> None:
    await resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{what}: HTTP {resp.status}")


def op_get(ns: str) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]:
    async def go(session: aiohttp.ClientSession, url: str, i: int) -> None:
        async with session.get(f"{url}/api/v1/namespaces/{ns}/configmaps/cm-0") as r:
            await _check(r, "get")

    return go


def op_list(ns: str) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]:
    async def go(session: aiohttp.ClientSession, url: str, i: int) -> None:
        async with session.get(f"{url}/api/v1/namespaces/{ns}/configmaps") as r:
            await _check(r, "list")

    return go


def op_patch(
    ns: str, member: str = "data", *, json_patch: bool = False
) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]:
    """A merge patch of one configmap's ``data``, ``annotations`` or ``labels`` (the proxy
    judges them on its index: their format fixes the labels the object will have), or a JSON
    patch of its ``labels`` (judged on the API server's dry run)."""

    async def go(session: aiohttp.ClientSession, url: str, i: int) -> None:
        change = {"n": str(i)}
        if json_patch:
            ctype = "application/json-patch+json"
            ops = [{"op": "add", "path": f"/metadata/{member}/n", "value": str(i)}]
            body = json.dumps(ops)
        else:
            ctype = "application/merge-patch+json"
            doc = {"metadata": {member: change}} if member != "data" else {member: change}
            body = json.dumps(doc)
        async with session.patch(
            # One configmap per worker: a covered write is made conditional on the checked
            # resourceVersion, so workers sharing an object would get 409s (by design).
            f"{url}/api/v1/namespaces/{ns}/configmaps/cm-{i % 100}",
            data=body,
            headers={"Content-Type": ctype},
        ) as r:
            await _check(r, "patch")

    return go


def op_label_pod(ns: str) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]:
    """``kubectl label pod``'s merge patch of a bare pod (judged on the index: the patch
    names nothing but the metadata, so the pod's spec stays as it is)."""

    async def go(session: aiohttp.ClientSession, url: str, i: int) -> None:
        body = json.dumps({"metadata": {"labels": {"n": str(i)}}})
        async with session.patch(
            f"{url}/api/v1/namespaces/{ns}/pods/pod-{i % PODS}",
            data=body,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            await _check(r, "patch")

    return go


def op_put(ns: str) -> Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]:
    """A PUT of one configmap as ``kubectl replace`` sends a manifest: no resourceVersion."""

    async def go(session: aiohttp.ClientSession, url: str, i: int) -> None:
        name = f"cm-{i % 100}"
        body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"n": str(i)},
                "metadata": {"name": name, "labels": {"aura": "blue"}}}  # fmt: skip
        async with session.put(f"{url}/api/v1/namespaces/{ns}/configmaps/{name}", json=body) as r:
            await _check(r, "put")

    return go


async def seed(target: Target) -> None:
    """Two namespaces of 100 configmaps (labelled aura=blue: the lock covers, never matches)."""
    headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for ns in (OPEN_NS, LOCKED_NS):
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            async with s.post(f"{target.url}/api/v1/namespaces", json=body, ssl=target.ssl) as r:
                await r.read()
            for i in range(LIST_SIZE):
                cm = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"cm-{i}", "labels": {"aura": "blue"}},
                    "data": {"n": "0"},
                }
                async with s.post(
                    f"{target.url}/api/v1/namespaces/{ns}/configmaps", json=cm, ssl=target.ssl
                ) as r:
                    await r.read()
        # Bare pods (kubectl run) in the locked namespace: the founding scenario's kind.
        for i in range(PODS):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"pod-{i}", "labels": {"aura": "blue"}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]},
            }
            async with s.post(
                f"{target.url}/api/v1/namespaces/{LOCKED_NS}/pods", json=pod, ssl=target.ssl
            ) as r:
                await r.read()


async def open_watches(
    target: Target, n: int, burst: bool = False
) -> tuple[aiohttp.ClientSession, list[Any]]:
    """``n`` watches of the configmaps of a namespace of 100, each on its own connection.

    As kubectl (``get -w``) and client-go informers open them: a LIST, then a watch from the
    list's resourceVersion, so a watch starts with no events. With ``burst``, every watch
    starts at resourceVersion 0 instead and first receives the 100 objects as ADDED events
    (~40 kB), the heaviest start a watch can have; TLS and read buffers then grow to it.
    """
    connector = aiohttp.TCPConnector(limit=0, ssl=target.ssl)
    session = aiohttp.ClientSession(
        connector=connector, headers={"Authorization": f"Bearer {target.token}"}
    )
    base = f"{target.url}/api/v1/namespaces/{OPEN_NS}/configmaps"
    version = "0"
    if not burst:
        async with session.get(base) as listed:
            version = str((await listed.json())["metadata"]["resourceVersion"])
    responses = []
    for _ in range(n):
        r = await session.get(
            f"{base}?watch=true&resourceVersion={version}",
            timeout=aiohttp.ClientTimeout(total=None),
        )
        if r.status != 200:
            raise RuntimeError(f"watch: HTTP {r.status}")
        responses.append(r)
    if burst:
        # Wait until every watch got its 100 ADDED events: the buffers are at their largest.
        for r in responses:
            for _ in range(LIST_SIZE):
                await r.content.readline()
    return session, responses


# ---------------------------------------------------------------------------------------------


def kubeconfig_token_and_ca(path: Path) -> tuple[str, bytes]:
    import base64

    import yaml

    data = yaml.safe_load(path.read_text())
    user = data["users"][0]["user"]
    ca = base64.b64decode(data["clusters"][0]["cluster"]["certificate-authority-data"])
    return str(user["token"]), ca


async def measure(
    targets: list[Target], seconds: float, rounds: int, only: str = ""
) -> dict[tuple[str, str, int], Result]:
    """Every operation x concurrency x target. The targets take turns, round after round,
    so that load from elsewhere on the machine hits all of them alike."""
    ops = {
        "GET one object": op_get(OPEN_NS),
        f"LIST of {LIST_SIZE}": op_list(OPEN_NS),
        "PATCH, no lock in namespace": op_patch(OPEN_NS),
        "PATCH, covered by a lock, allowed": op_patch(LOCKED_NS),
        "PATCH of annotations, covered, allowed": op_patch(LOCKED_NS, "annotations"),
        "PATCH of labels, covered, allowed": op_patch(LOCKED_NS, "labels"),
        "JSON patch of labels, covered, allowed": op_patch(LOCKED_NS, "labels", json_patch=True),
        "PATCH of a bare pod's labels, covered, allowed": op_label_pod(LOCKED_NS),
        "PUT without version, covered, allowed": op_put(LOCKED_NS),
    }
    results: dict[tuple[str, str, int], Result] = {}
    for op_name, op in ops.items():
        if only and only.lower() not in op_name.lower():
            continue
        for conc in (1, 16):
            samples: dict[str, list[tuple[float, list[float], float]]] = {
                t.name: [] for t in targets
            }
            for _ in range(rounds):
                for t in targets:
                    samples[t.name].append(await run_load(t, op, conc, seconds / rounds))
            for t in targets:
                r = results[(op_name, t.name, conc)] = summarize(samples[t.name])
                print(
                    f"  {op_name:40} c={conc:<2} {t.name:10} {r.rps:8.0f} req/s "
                    f"p50 {r.p50_ms:6.2f} ms p99 {r.p99_ms:6.2f} ms cpu {r.cpu_us:5.0f} us/req",
                    file=sys.stderr,
                )
    return results


def table(targets: list[Target], results: dict[tuple[str, str, int], Result]) -> str:
    stock = any(t.name == "stock mitmdump" for t in targets)
    lines = [
        "| operation | clients | direct req/s "
        + ("| stock mitmdump req/s " if stock else "")
        + "| mitmproxy req/s | klockproxy req/s "
        "| klockproxy / mitmproxy | added p50 mitmproxy / klockproxy (ms) "
        "| added p99 mitmproxy / klockproxy (ms) | proxy CPU per request mitmproxy / klockproxy "
        "(µs) |",
        "|---|---|---|" + ("---|" if stock else "") + "---|---|---|---|---|---|",
    ]
    ops = sorted({k[0] for k in results}, key=lambda o: list(results).index((o, "direct", 1)))
    for op in ops:
        for conc in (1, 16):
            d = results[(op, "direct", conc)]
            m = results[(op, "mitmproxy", conc)]
            k = results[(op, "klockproxy", conc)]
            st = f"| {results[(op, 'stock mitmdump', conc)].rps:.0f} " if stock else ""
            lines.append(
                f"| {op} | {conc} | {d.rps:.0f} {st}| {m.rps:.0f} | {k.rps:.0f} "
                f"| {k.rps / m.rps:.2f} "
                f"| {m.p50_ms - d.p50_ms:.2f} / {k.p50_ms - d.p50_ms:.2f} "
                f"| {m.p99_ms - d.p99_ms:.2f} / {k.p99_ms - d.p99_ms:.2f} "
                f"| {m.cpu_us:.0f} / {k.cpu_us:.0f} |"
            )
    return "\n".join(lines)


async def memory(children: dict[str, Child], targets: dict[str, Target]) -> list[str]:
    """Idle RSS, then RSS with 500 open watches opened as kubectl opens them, then with 500
    more that each start with 100 ADDED events. The cost per watch is measured above 100
    open watches, so one-time allocations of the first connections (TLS contexts, code
    paths warming up) are not counted; the two kinds are stacked (nothing is closed in
    between), so the second cannot reuse memory freed by the first."""
    rows = [
        f"| process | idle RSS | RSS measured with {WARM_WATCHES} + {WATCHES} watches open "
        "| per watch, as kubectl watches "
        "| per watch, starting with 100 ADDED events |",
        "|---|---|---|---|---|",
    ]
    for name in ("stock mitmdump", "mitmproxy", "klockproxy"):
        if name not in children:
            continue
        child, target = children[name], targets[name]
        await asyncio.sleep(1)
        idle = child.rss_kb()
        try:
            warm_session, warm = await asyncio.wait_for(open_watches(target, WARM_WATCHES), 120)
        except TimeoutError:
            # Stock mitmdump relays no response headers of a watch that has no event yet.
            rows.append(f"| {name} | {idle / 1024:.1f} MB | — (an idle watch never gets its "
                        "response headers) | — | — |")  # fmt: skip
            continue
        await asyncio.sleep(1)
        base = child.rss_kb()
        session, responses = await open_watches(target, WATCHES)
        await asyncio.sleep(2)
        busy = child.rss_kb()
        burst_session, bursts = await open_watches(target, WATCHES, burst=True)
        await asyncio.sleep(2)
        busier = child.rss_kb()
        for r in responses + warm + bursts:
            r.close()
        for s in (session, warm_session, burst_session):
            await s.close()
        rows.append(
            f"| {name} | {idle / 1024:.1f} MB | {busy / 1024:.1f} MB "
            f"| {(busy - base) / WATCHES:.0f} kB | {(busier - busy) / WATCHES:.0f} kB |"
        )
    return rows


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


def serve_argv(
    admin_kc: str,
    lock_file: Path,
    out: Path,
    state_dir: Path,
    *,
    log_level: str = "WARNING",
    extra_locks: tuple[str, ...] = (),
) -> list[str]:
    """``klockproxy serve`` in front of the API server of ``admin_kc``, as the benchmarks run
    it (``extra_locks``: more ``--locks`` sources, e.g. ``cluster``)."""
    locks = [arg for source in (str(lock_file), *extra_locks) for arg in ("--locks", source)]
    return [
        *[sys.executable, "-m", "klockproxy", "--log-level", log_level, "serve"],
        *["--kubeconfig", admin_kc, "--listen", "127.0.0.1:0", *locks],
        *["--write-kubeconfig", str(out), "--state-dir", str(state_dir)],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="per operation, concurrency and target"
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns the targets take")
    parser.add_argument("--only", default="", help="only operations whose name contains this")
    parser.add_argument("--no-memory", action="store_true", help="skip the watch memory test")
    parser.add_argument(
        "--no-stock", action="store_true", help="leave out stock mitmdump (DumpMaster)"
    )
    parser.add_argument(
        "--optimize-bare",
        action="store_true",
        help="run the bare mitmproxy under python -O too (klockproxy serve always is)",
    )
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    children: dict[str, Child] = {}
    try:
        sb = start_child([sys.executable, "-c", SANDBOX_CHILD, str(work / "sandbox")])
        children["sandbox"] = sb
        sandbox_url, admin_kc = sb.first_line.split()
        token, sandbox_ca = kubeconfig_token_and_ca(Path(admin_kc))
        direct = Target("direct", sandbox_url, token, ssl_for(sandbox_ca), sb.proc.pid)
        asyncio.run(seed(direct))

        from klockproxy.cluster.certs import CertificateAuthority

        ca = CertificateAuthority.create("bench proxy CA")
        cert, key = ca.issue_server(["127.0.0.1"])
        pem = work / "proxy.pem"
        pem.write_bytes(cert + key)
        ca_file = work / "sandbox-ca.crt"
        ca_file.write_bytes(sandbox_ca)
        (work / "mitm").mkdir()
        bare = start_child(
            [
                sys.executable,
                *(["-O"] if args.optimize_bare else []),
                "-c",
                BARE_CHILD,
                sandbox_url,
                str(ca_file),
                str(pem),
                str(work / "mitm"),
            ]
        )
        children["mitmproxy"] = bare
        # The no-op proxy forwards the client's own (admin) token.
        mitm = Target("mitmproxy", bare.first_line, token, ssl_for(ca.cert_pem), bare.proc.pid)

        lock_file = work / "locks.yaml"
        lock_file.write_text(LOCK_FILE)
        out = work / "proxy.kubeconfig"
        kp = start_child(serve_argv(admin_kc, lock_file, out, work / "state"))
        children["klockproxy"] = kp
        kp_token, kp_ca = kubeconfig_token_and_ca(out)
        kp_url = kp.first_line.split()[3]
        klock = Target("klockproxy", kp_url, kp_token, ssl_for(kp_ca), kp.proc.pid)

        targets = [direct, mitm, klock]
        if not args.no_stock:
            (work / "mitmdump").mkdir()
            stock_child, stock_url = start_mitmdump(sandbox_url, ca_file, pem, work / "mitmdump")
            children["stock mitmdump"] = stock_child
            targets.append(
                Target(
                    "stock mitmdump", stock_url, token, ssl_for(ca.cert_pem), stock_child.proc.pid
                )
            )
        print(f"# klockproxy benchmark — {machine()}", file=sys.stderr)
        results = asyncio.run(measure(targets, args.seconds, args.rounds, args.only))
        mem = [] if args.no_memory else asyncio.run(memory(children, {t.name: t for t in targets}))
        print(
            f"\nMachine: {machine()}; {args.seconds:.0f} s per measurement in "
            f"{args.rounds} rounds; 1-min load average at start: {load_before:.2f}.\n"
        )
        print(table(targets, results))
        print()
        print("\n".join(mem))
    finally:
        for child in reversed(list(children.values())):
            child.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
