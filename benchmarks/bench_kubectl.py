"""What users feel: whole kubectl runs, and watches opened the way kubectl opens them.

Run: ``python benchmarks/bench_kubectl.py [--runs N] [--watches N]``. Not collected by pytest.

Processes (each its own interpreter): the sandbox API server; ``klockproxy serve`` with a lock
file (under ``python -O``, as for every user); ``kubectl proxy`` (plain HTTP on loopback, the
baseline a user would otherwise reach for); a bare mitmproxy ``Master`` with a no-op addon (the
same embedded mitmproxy as ``klockproxy serve``, tuned the same way: the floor every mitmproxy
addon stands on); and stock ``mitmdump`` (``DumpMaster``, all default addons,
``stream_large_bodies`` set so that watches flow). ``BENCH_KLOCKPROXY_BEFORE=<source tree>``
adds ``klockproxy serve`` from another checkout (A/B against an earlier commit).

1. Whole kubectl runs, process start to exit, paired: every repetition runs the same command
   against every target in a shuffled order, so load from elsewhere on the machine hits them
   alike. Reported: median wall time per target, the median of the per-repetition ratios
   (klockproxy / kubectl proxy, ...), and the CPU time the proxy process spent per run (from
   /proc: it moves far less with the machine's load than wall time does).
   - ``kubectl get configmaps`` in a namespace of 100;
   - ``kubectl label configmap ... --overwrite`` in a namespace a Lock covers (the proxy reads
     the object and the caller's identity before it forwards the PATCH).
2. First request on a new connection: from the completed TLS handshake (TCP connect for
   ``kubectl proxy``) to the first byte of the response, median of many fresh connections.
3. Memory per open watch, measured as RSS growth of the proxy process over many watches, each
   opened the way kubectl (``get -w``) and client-go informers open them: a new connection
   carrying a LIST of ~108 kB, then on the same connection a watch from the list's
   resourceVersion. Once over HTTP/1.1 and once over HTTP/2 (LIST and watch as two streams of
   one connection, as kubectl multiplexes them; ``kubectl proxy`` serves HTTP/1.1 only).
   The sandbox serves HTTP/1.1, so an HTTP/2 client's LIST and watch each get their own
   upstream connection; one more row, "klockproxy (HTTP/2 API server)", puts a second
   ``klockproxy serve`` in front of a second sandbox behind its HTTP/2 front (as a real
   kube-apiserver speaks h2: both streams share one upstream connection).

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The benchmarks are scripts, not a package: bench_proxy is imported from beside this file.
from bench_proxy import (
    BARE_CHILD,
    LOCK_FILE,
    LOCKED_NS,
    OPEN_NS,
    SANDBOX_CHILD,
    Child,
    Target,
    kubeconfig_token_and_ca,
    machine,
    seed,
    serve_argv,
    ssl_for,
    start_child,
    start_mitmdump,
)

WATCH_NS = "bench-watch"
WATCH_OBJECTS = 100
# ~1 kB of data per configmap: the LIST of the namespace is ~108 kB, as in issue 12.
WATCH_PAYLOAD = "x" * 680
# The watch row of klockproxy in front of a sandbox that speaks HTTP/2 (as real API servers do).
H2_UPSTREAM = "klockproxy (HTTP/2 API server)"


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class KubeTarget:
    """A way to reach the API server with kubectl: its kubeconfig and the process serving it."""

    name: str
    kubeconfig: Path
    url: str
    pid: int | None  # the proxy process (None: direct)
    token: str = ""
    ssl: ssl.SSLContext | None = None
    cache_dir: Path = field(default_factory=Path)


def write_kubeconfig(
    path: Path, server: str, token: str, ca_pem: bytes | None, namespace: str = "default"
) -> Path:
    import base64

    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [
            {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}
        ],
        "current-context": "x",
    }
    path.write_text(json.dumps(cfg))
    return path


def start_kubectl_proxy(admin_kc: str) -> tuple[Child, str]:
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", admin_kc, "proxy", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # "Starting to serve on 127.0.0.1:PORT"
    if "serve on" not in line:
        proc.kill()
        raise RuntimeError(f"kubectl proxy did not start: {line!r}")
    return Child(proc, line), "http://" + line.rsplit(" ", 1)[1]


# ---------------------------------------------------------------------------------------------
# Whole kubectl runs


def kubectl_run(target: KubeTarget, args: list[str]) -> float:
    """Wall time of one whole kubectl process (start to exit), in seconds."""
    cmd = [
        "kubectl",
        "--kubeconfig",
        str(target.kubeconfig),
        "--cache-dir",
        str(target.cache_dir),
        *args,
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{target.name}: kubectl {' '.join(args)}: {done.stderr.decode()}")
    return elapsed


def start_child_in(cwd: str, argv: list[str], env: dict[str, str]) -> Child:
    """As bench_proxy.start_child, in the working directory ``cwd``."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[:3]} did not start in {cwd}")
    return Child(proc, line)


def kubectl_serve_argv(admin_kc: str, lock_file: Path, out: Path, state_dir: Path) -> list[str]:
    """``klockproxy serve`` as the rows run it (its log level from BENCH_KLOCKPROXY_LOG)."""
    level = os.environ.get("BENCH_KLOCKPROXY_LOG", "WARNING")
    return serve_argv(admin_kc, lock_file, out, state_dir, log_level=level)


def start_h2_upstream_pair(work: Path, lock_file: Path, children: dict[str, Child]) -> KubeTarget:
    """A sandbox behind its HTTP/2 front and a ``klockproxy serve`` in front of it (children
    registered in ``children``); the watch namespace seeded. The proxy's target."""
    sb = start_child([sys.executable, "-c", SANDBOX_CHILD, str(work / "sandbox-h2"), "--http2"])
    children["sandbox (HTTP/2)"] = sb
    url, admin_kc = sb.first_line.split()
    token, ca_pem = kubeconfig_token_and_ca(Path(admin_kc))
    asyncio.run(
        seed_watch_namespace(
            KubeTarget("direct", Path(admin_kc), url, None, token, ssl_for(ca_pem))
        )
    )
    out = work / "proxy-h2.kubeconfig"
    kp = start_child(kubectl_serve_argv(admin_kc, lock_file, out, work / "state-h2"))
    children[H2_UPSTREAM] = kp
    kp_token, kp_ca = kubeconfig_token_and_ca(out)
    return KubeTarget(
        H2_UPSTREAM, out, kp.first_line.split()[3], kp.proc.pid, kp_token, ssl_for(kp_ca)
    )


def cpu_seconds(pid: int | None) -> float:
    """CPU time of every thread of a process so far, from /proc/<pid>/task/*/schedstat
    (nanoseconds, unlike /proc/<pid>/stat's 10 ms ticks); 0 when unknown."""
    if pid is None:
        return 0.0
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


@dataclass
class RunStats:
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    upstream_cpu: dict[str, list[float]]


def paired_runs(
    targets: list[KubeTarget], make_args: Callable[[int], list[str]], runs: int, upstream: int
) -> RunStats:
    wall: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    upstream_cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    # Warm-up: discovery caches filled, proxies' identity caches and code paths warm.
    for t in targets:
        for i in range(3):
            kubectl_run(t, make_args(-1 - i))
    rng = random.Random(12)
    for i in range(runs):
        order = list(targets)
        rng.shuffle(order)
        for t in order:
            c0, u0 = cpu_seconds(t.pid), cpu_seconds(upstream)
            wall[t.name].append(kubectl_run(t, make_args(i)))
            cpu[t.name].append(cpu_seconds(t.pid) - c0)
            upstream_cpu[t.name].append(cpu_seconds(upstream) - u0)
    return RunStats(wall, cpu, upstream_cpu)


def run_table(title: str, stats: RunStats, baseline: str, names: list[str]) -> list[str]:
    lines = [
        f"| {title} | median wall (ms) | / kubectl proxy (median of paired ratios) "
        "| / direct | proxy CPU per run (ms) | API server CPU per run (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        wall = stats.wall[name]
        ratio_kp = statistics.median(a / b for a, b in zip(wall, stats.wall[baseline], strict=True))
        ratio_d = statistics.median(a / b for a, b in zip(wall, stats.wall["direct"], strict=True))
        cpu = stats.cpu[name]
        cpu_text = "—" if name == "direct" else f"{statistics.median(cpu) * 1000:.2f}"
        up = statistics.median(stats.upstream_cpu[name]) * 1000
        lines.append(
            f"| {name} | {statistics.median(wall) * 1000:.1f} | {ratio_kp:.2f} | {ratio_d:.2f} "
            f"| {cpu_text} | {up:.2f} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# First request on a new connection


def first_byte_ms(target: KubeTarget, path: str, n: int) -> float:
    """Median time from connection ready (TLS done) to the first response byte, in ms."""
    scheme, rest = target.url.split("://", 1)
    host, port = rest.rsplit(":", 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        + (f"Authorization: Bearer {target.token}\r\n" if target.token else "")
        + "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    times = []
    for _ in range(n):
        raw = socket.create_connection((host, int(port)))
        # As Go (kubectl) does: without it Nagle holds the request back until the server
        # ACKs the TLS Finished, up to the 40 ms delayed-ACK timeout.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if scheme == "https":
            assert target.ssl is not None
            sock = target.ssl.wrap_socket(raw, server_hostname=host)
        t0 = time.perf_counter()
        sock.sendall(request)
        sock.recv(1)
        times.append(time.perf_counter() - t0)
        while sock.recv(65536):
            pass
        sock.close()
    return statistics.median(times) * 1000


# ---------------------------------------------------------------------------------------------
# Watches as kubectl opens them


async def seed_watch_namespace(direct: KubeTarget) -> None:
    headers = {"Authorization": f"Bearer {direct.token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as s:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WATCH_NS}}
        async with s.post(f"{direct.url}/api/v1/namespaces", json=ns, ssl=direct.ssl) as r:
            await r.read()
        for i in range(WATCH_OBJECTS):
            cm = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{i}", "labels": {"aura": "blue"}},
                "data": {"payload": WATCH_PAYLOAD},
            }
            async with s.post(
                f"{direct.url}/api/v1/namespaces/{WATCH_NS}/configmaps", json=cm, ssl=direct.ssl
            ) as r:
                await r.read()


async def open_watches_h1(target: KubeTarget, n: int) -> tuple[list[Any], int]:
    """``n`` connections, each: LIST (~108 kB), then on the same connection a watch from the
    list's resourceVersion. aiohttp hands a request the idle connection the previous LIST
    left, so LIST i and watch i share a connection. Returns (handles, LIST size)."""
    connector = aiohttp.TCPConnector(limit=0, ssl=target.ssl if target.ssl else False)
    session = aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {target.token}"} if target.token else {},
    )
    base = f"{target.url}/api/v1/namespaces/{WATCH_NS}/configmaps"
    handles: list[Any] = [session]
    size = 0
    for _ in range(n):
        async with session.get(base) as listed:
            body = await listed.read()
        size = len(body)
        listed_obj = json.loads(body)
        if "resourceVersion" not in listed_obj.get("metadata", {}):
            raise RuntimeError(f"{target.name}: LIST: {body[:300]!r}")
        version = listed_obj["metadata"]["resourceVersion"]
        r = await session.get(
            f"{base}?watch=true&resourceVersion={version}",
            timeout=aiohttp.ClientTimeout(total=None),
        )
        if r.status != 200:
            raise RuntimeError(f"{target.name}: watch: HTTP {r.status}")
        handles.append(r)
    return handles, size


class H2Kubectl:
    """One HTTP/2 connection the way kubectl (Go's http2 transport) opens one: h2 by ALPN,
    4 MB stream and 1 GB connection flow-control windows."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
        self.conn.increment_flow_control_window((1 << 30) - 65535)
        self.writer.write(self.conn.data_to_send())
        self.status: dict[int, int] = {}
        self.body: dict[int, bytearray] = {}
        self.ended: set[int] = set()

    @classmethod
    async def connect(cls, target: KubeTarget) -> H2Kubectl:
        if target.ssl is None:
            raise RuntimeError(f"{target.name}: no TLS, no HTTP/2")
        ctx = target.ssl
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        host, port = target.url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise RuntimeError(f"{target.name}: h2 not negotiated")
        return cls(reader, writer)

    def get(self, target: KubeTarget, path: str) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        authority = target.url.split("://", 1)[1]
        headers = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            ("authorization", f"Bearer {target.token}"),
            ("accept", "application/json"),
        ]
        self.conn.send_headers(sid, headers, end_stream=True)
        self.body[sid] = bytearray()
        self.writer.write(self.conn.data_to_send())
        return sid

    async def until(self, done: Callable[[], bool]) -> None:
        import h2.events

        while not done():
            data = await self.reader.read(65536)
            if not data:
                raise RuntimeError("connection closed")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.body[event.stream_id] += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
            self.writer.write(self.conn.data_to_send())

    def close(self) -> None:
        self.writer.close()


async def open_watches_h2(target: KubeTarget, n: int) -> tuple[list[Any], int]:
    """As open_watches_h1, over HTTP/2: one connection per kubectl, LIST and watch as two
    streams of it."""
    handles: list[Any] = []
    size = 0
    base = f"/api/v1/namespaces/{WATCH_NS}/configmaps"
    for _ in range(n):
        client = await H2Kubectl.connect(target)
        handles.append(client)
        listed = client.get(target, base)
        await client.until(lambda c=client, s=listed: s in c.ended)
        size = len(client.body[listed])
        version = json.loads(bytes(client.body[listed]))["metadata"]["resourceVersion"]
        watch = client.get(target, f"{base}?watch=true&resourceVersion={version}")
        await client.until(lambda c=client, s=watch: s in c.status)
        if client.status[watch] != 200:
            raise RuntimeError(f"{target.name}: watch: HTTP {client.status[watch]}")
    return handles, size


async def close_watches(handles: list[Any]) -> None:
    for h in handles:
        if isinstance(h, aiohttp.ClientSession):
            continue
        else:
            h.close()
    for h in handles:
        if isinstance(h, aiohttp.ClientSession):
            await h.close()


@dataclass
class WatchMemory:
    h1: int  # RSS growth per watch, bytes
    h2: int | None  # the same over HTTP/2 (None: the target serves HTTP/1.1 only)
    rss_kb: int  # RSS measured with every watch open
    list_size: int


async def watch_memory(child: Child, target: KubeTarget, n: int) -> WatchMemory:
    """Per-watch RSS growth over ``n`` watches after a LIST over HTTP/1.1, then ``n`` more
    over HTTP/2, stacked (nothing is closed in between, so the second batch cannot reuse
    memory the first one freed). Measured above a first batch of watches, so one-time
    allocations (contexts, code paths warming up) are not counted."""
    # A target that cannot serve an idle watch (no event yet) raises TimeoutError.
    warm, _ = await asyncio.wait_for(open_watches_h1(target, max(20, n // 5)), 120)
    await asyncio.sleep(1)
    before = child.rss_kb()
    h1_handles, size = await open_watches_h1(target, n)
    await asyncio.sleep(2)
    middle = child.rss_kb()
    h2_handles: list[Any] = []
    if target.ssl is not None:
        h2_handles, _ = await open_watches_h2(target, n)
        await asyncio.sleep(2)
    after = child.rss_kb()
    for handles in (h2_handles, h1_handles, warm):
        await close_watches(handles)
    await asyncio.sleep(1)
    return WatchMemory(
        h1=(middle - before) * 1024 // n,
        h2=(after - middle) * 1024 // n if h2_handles else None,
        rss_kb=after,
        list_size=size,
    )


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="paired repetitions per command")
    parser.add_argument("--watches", type=int, default=300, help="watches per memory row")
    parser.add_argument("--first-byte", type=int, default=200, help="fresh connections timed")
    parser.add_argument("--only", default="", help="runs|first-byte|watches (default: all)")
    parser.add_argument(
        "--targets", default="", help="comma-separated target names for the watch rows"
    )
    parser.add_argument(
        "--hold", action="store_true", help="print the targets and wait (for profiling)"
    )
    args = parser.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-kubectl-"))
    children: dict[str, Child] = {}
    try:
        sb = start_child([sys.executable, "-c", SANDBOX_CHILD, str(work / "sandbox")])
        children["sandbox"] = sb
        sandbox_url, admin_kc = sb.first_line.split()
        token, sandbox_ca = kubeconfig_token_and_ca(Path(admin_kc))
        asyncio.run(seed(Target("direct", sandbox_url, token, ssl_for(sandbox_ca))))
        direct = KubeTarget(
            "direct",
            write_kubeconfig(work / "direct.kc", sandbox_url, token, sandbox_ca),
            sandbox_url,
            None,
            token,
            ssl_for(sandbox_ca),
        )
        asyncio.run(seed_watch_namespace(direct))

        from klockproxy.cluster.certs import CertificateAuthority

        ca = CertificateAuthority.create("bench proxy CA")
        cert, key = ca.issue_server(["127.0.0.1"])
        pem = work / "proxy.pem"
        pem.write_bytes(cert + key)
        ca_file = work / "sandbox-ca.crt"
        ca_file.write_bytes(sandbox_ca)

        lock_file = work / "locks.yaml"
        lock_file.write_text(LOCK_FILE)
        out = work / "proxy.kubeconfig"
        kp = start_child(kubectl_serve_argv(admin_kc, lock_file, out, work / "state"))
        children["klockproxy"] = kp
        kp_token, kp_ca = kubeconfig_token_and_ca(out)
        klock = KubeTarget(
            "klockproxy", out, kp.first_line.split()[3], kp.proc.pid, kp_token, ssl_for(kp_ca)
        )

        extra: list[KubeTarget] = []
        if before := os.environ.get("BENCH_KLOCKPROXY_BEFORE"):
            # A/B: the same command from another source tree (e.g. the previous commit).
            out_before = work / "before.kubeconfig"
            # Started from inside that tree: ``python -m`` puts the working directory first on
            # sys.path, ahead of PYTHONPATH.
            kb = start_child_in(
                before,
                kubectl_serve_argv(admin_kc, lock_file, out_before, work / "state-before"),
                {**os.environ, "PYTHONPATH": before},
            )
            children["klockproxy (before)"] = kb
            kb_token, kb_ca = kubeconfig_token_and_ca(out_before)
            extra.append(
                KubeTarget(
                    "klockproxy (before)",
                    out_before,
                    kb.first_line.split()[3],
                    kb.proc.pid,
                    kb_token,
                    ssl_for(kb_ca),
                )
            )

        kubeproxy_child, kubeproxy_url = start_kubectl_proxy(admin_kc)
        children["kubectl proxy"] = kubeproxy_child
        kubeproxy = KubeTarget(
            "kubectl proxy",
            # kubectl proxy attaches the credentials itself.
            write_kubeconfig(work / "kproxy.kc", kubeproxy_url, "unused", None),
            kubeproxy_url,
            kubeproxy_child.proc.pid,
            "",
            None,
        )

        (work / "mitm").mkdir()
        bare_child = start_child(
            [
                sys.executable,
                "-O",
                "-c",
                BARE_CHILD,
                sandbox_url,
                str(ca_file),
                str(pem),
                str(work / "mitm"),
            ]
        )
        children["bare mitmproxy"] = bare_child
        bare = KubeTarget(
            "bare mitmproxy",
            write_kubeconfig(work / "bare.kc", bare_child.first_line, token, ca.cert_pem),
            bare_child.first_line,
            bare_child.proc.pid,
            token,
            ssl_for(ca.cert_pem),
        )
        mitm_child, mitm_url = start_mitmdump(sandbox_url, ca_file, pem, work / "mitmdump")
        children["stock mitmdump"] = mitm_child
        stock = KubeTarget(
            "stock mitmdump",
            write_kubeconfig(work / "stock.kc", mitm_url, token, ca.cert_pem),
            mitm_url,
            mitm_child.proc.pid,
            token,
            ssl_for(ca.cert_pem),
        )
        targets = [direct, kubeproxy, stock, bare, klock, *extra]
        for t in targets:
            t.cache_dir = work / "cache" / t.name.replace(" ", "-")
        print(f"# bench_kubectl — {machine()}; load {load_before}", file=sys.stderr)
        if args.hold:
            for t in targets:
                print(f"{t.name}: {t.url} kubeconfig={t.kubeconfig} pid={t.pid}", flush=True)
            print(f"cache dirs under {work / 'cache'}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(3600)
            return 0

        report: list[str] = []
        names = [t.name for t in targets]
        if args.only in ("", "runs"):
            get = paired_runs(
                targets, lambda i: ["get", "configmaps", "-n", OPEN_NS], args.runs, sb.proc.pid
            )
            label = paired_runs(
                targets,
                lambda i: [
                    "label",
                    "configmap",
                    "cm-0",
                    "-n",
                    LOCKED_NS,
                    f"bench={i + 100}",
                    "--overwrite",
                ],
                args.runs,
                sb.proc.pid,
            )
            report += run_table("`kubectl get configmaps` (100)", get, "kubectl proxy", names)
            report.append("")
            report += run_table(
                "`kubectl label --overwrite`, namespace with a Lock", label, "kubectl proxy", names
            )
            report.append("")
        if args.only in ("", "first-byte"):
            report += [
                "| target | first request on a new connection: ready → first byte (ms) |",
                "|---|---|",
            ]
            path = f"/api/v1/namespaces/{OPEN_NS}/configmaps/cm-0"
            for t in targets:
                report.append(f"| {t.name} | {first_byte_ms(t, path, args.first_byte):.2f} |")
            report.append("")
        if args.only in ("", "watches"):
            wanted = args.targets.split(",") if args.targets else []
            report += [
                "| process | idle RSS | per watch after a LIST, HTTP/1.1 | per watch after a "
                f"LIST, HTTP/2 | RSS measured with {args.watches // 5} + {args.watches} (HTTP/1.1)"
                f" + {args.watches} (HTTP/2) watches open |",
                "|---|---|---|---|---|",
            ]
            size = 0
            watch_targets = targets[1:]
            if not wanted or H2_UPSTREAM in wanted:
                watch_targets.append(start_h2_upstream_pair(work, lock_file, children))
            for t in watch_targets:
                if wanted and t.name not in wanted:
                    continue
                child = children[t.name]
                idle = child.rss_kb()
                try:
                    mem = asyncio.run(watch_memory(child, t, args.watches))
                except TimeoutError:
                    # Stock mitmdump: the headers of a watch with no event yet never arrive.
                    report.append(
                        f"| {t.name} | {idle / 1024:.1f} MB | — (an idle watch gets no response "
                        "headers) | — | — |"
                    )
                    continue
                size = mem.list_size
                h2_text = "— (HTTP/1.1 only)" if mem.h2 is None else f"{mem.h2 / 1024:.0f} kB"
                report.append(
                    f"| {t.name} | {idle / 1024:.1f} MB | {mem.h1 / 1024:.0f} kB | {h2_text} "
                    f"| {mem.rss_kb / 1024:.1f} MB |"
                )
                print(report[-1], file=sys.stderr)
            report.append(f"\n(LIST body: {size / 1000:.0f} kB)")
        load_after = os.getloadavg()
        print(
            f"\nMachine: {machine()}; load average at start {load_before[0]:.2f} "
            f"{load_before[1]:.2f} {load_before[2]:.2f}, at the end {load_after[0]:.2f} "
            f"{load_after[1]:.2f} {load_after[2]:.2f}; {args.runs} paired runs per command.\n"
        )
        print("\n".join(report))
    finally:
        for child in reversed(list(children.values())):
            child.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
