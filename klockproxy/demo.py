"""``klockproxy demo``: the founding scenario, ready to try with kubectl.

One process runs the sandbox API server and the local-mode proxy in front of it, creates the
scenario of docs/semantics.md (my-pod and my-cm labelled aura=red, other-pod, the service
account jonny-op with its role and binding, and the Lock ``lockred``) THROUGH THE SANDBOX'S API
as the admin (exactly what ``kubectl`` would send), writes a kubeconfig pointing at the proxy,
prints the commands to try with the outcome each must have, and serves until Ctrl-C.

The printed commands are machine-checked by tests/test_demo.py: every line that starts with
``kubectl`` ends with ``# denied`` or ``# allowed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from klockproxy.cluster.upstream import Upstream, UpstreamStatusError
from klockproxy.core.errors import ConfigError, KlockProxyError, UpstreamError

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_STATE_DIR = "~/.klockproxy/demo"
NAMESPACE = "default"
JONNY = f"system:serviceaccount:{NAMESPACE}:jonny-op"

LOCKRED: dict[str, Any] = {
    "apiVersion": "klock.rnemet.dev/v1",
    "kind": "Lock",
    "metadata": {"name": "lockred", "namespace": NAMESPACE},
    "spec": {
        "operations": ["UPDATE", "DELETE"],
        "matcher": {"aura": "red"},
        "exclusive": {"name": "jonny-op"},
    },
}


def _pod(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    # What `kubectl run NAME --image nginx [--labels ...]` sends.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"run": name, **labels}},
        "spec": {"containers": [{"name": name, "image": "nginx"}]},
    }


def scenario_objects() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) for everything the founding scenario creates, in order."""
    ns = f"/api/v1/namespaces/{NAMESPACE}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}"
    return [
        (f"{ns}/pods", _pod("my-pod", {"aura": "red"})),
        (
            f"{ns}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "my-cm", "namespace": NAMESPACE, "labels": {"aura": "red"}},
                "data": {"nikola": "tesla"},
            },
        ),
        (f"{ns}/pods", _pod("other-pod", {})),
        (
            f"{ns}/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "jonny-op", "namespace": NAMESPACE},
            },
        ),
        (
            f"{rbac}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "app-op", "namespace": NAMESPACE},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["pods", "configmaps"],
                        "verbs": ["list", "get", "create", "update", "delete", "patch"],
                    }
                ],
            },
        ),
        (
            f"{rbac}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "jonny-app", "namespace": NAMESPACE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "app-op",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "jonny-op", "namespace": NAMESPACE}
                ],
            },
        ),
    ]


async def _create(api: Upstream, collection: str, obj: Mapping[str, Any]) -> None:
    """POST ``obj``; an object that already exists is fine (the demo may be re-run)."""
    try:
        await api.create_object(collection, obj, {})
    except UpstreamStatusError as e:
        if e.code != 409:
            raise ConfigError(
                f"creating {obj['kind']} {obj['metadata']['name']} failed: HTTP {e.code} "
                f"{e.message}"
            ) from e
    except UpstreamError as e:
        raise ConfigError(str(e)) from e


async def install_scenario(api: Upstream, *, timeout: float = 15.0) -> None:
    """Create the Lock CRD (if missing), the founding scenario's objects, and ``lockred``.

    ``api`` is the proxy's own API client, holding the sandbox admin's credentials.
    """
    from klockproxy.crd import CRD_NAME, crd_object

    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        if await api.get_object(f"{crd_path}/{CRD_NAME}", {}) is None:
            await _create(api, crd_path, crd_object())
    except UpstreamError as e:
        raise ConfigError(str(e)) from e
    for collection, obj in scenario_objects():
        await _create(api, collection, obj)
    # The new group is served once the CRD is established.
    locks_path = f"/apis/klock.rnemet.dev/v1/namespaces/{NAMESPACE}/locks"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await api.list_objects(locks_path, {})
            break
        except UpstreamStatusError as e:
            if loop.time() > deadline:
                raise ConfigError(
                    f"the Lock CRD was not served after {timeout:.0f} s (HTTP {e.code})"
                ) from e
        except UpstreamError as e:
            raise ConfigError(str(e)) from e
        await asyncio.sleep(0.1)
    await _create(api, locks_path, LOCKRED)


def try_these(kubeconfig: Path) -> str:
    """The commands to try, each with the outcome it must have (tests run them)."""
    as_jonny = f"--as={JONNY}"
    return "\n".join(
        [
            "",
            "Try it (as the sandbox admin unless --as says otherwise):",
            f"  export KUBECONFIG={kubeconfig}",
            "  kubectl get pods,configmaps,locks --show-labels        # allowed",
            "  kubectl label pod my-pod here=was-admin                 # denied",
            "  kubectl label cm my-cm x=y                              # denied",
            "  kubectl delete cm my-cm                                 # denied",
            "  kubectl label pod other-pod aura=blue --overwrite       # allowed",
            f"  kubectl {as_jonny} label pod my-pod here=was-jonny  # allowed",
            f"  kubectl {as_jonny} label cm my-cm x=jonny  # allowed",
            "  kubectl delete lock lockred                             # allowed",
            "  kubectl label pod my-pod here=was-admin --overwrite     # allowed",
            "",
            "Ctrl-C stops the demo (the sandbox is in memory: everything is forgotten).",
        ]
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``klockproxy demo``."""
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"proxy HOST:PORT (default {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"where the CAs and the kubeconfig go (default {DEFAULT_STATE_DIR})",
    )


@contextlib.contextmanager
def _only_demo_in(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/demo.lock`` while the demo runs: a second demo on the same state
    directory would overwrite the running one's kubeconfigs, CA and sandbox state."""
    fd = os.open(state_dir / "demo.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise ConfigError(
                f"another klockproxy demo is running with the state directory {state_dir} "
                "(stop it, or choose another --state-dir)"
            ) from e
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_listen(host: str, port: int) -> None:
    """ConfigError when ``host:port`` is taken, before anything is started or written."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the proxy's own listener does: a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            reason = "address already in use" if e.errno == errno.EADDRINUSE else str(e)
            raise ConfigError(
                f"cannot listen on {host}:{port}: {reason} (is another klockproxy demo "
                "running? choose another address with --listen)"
            ) from e


async def run_demo(listen: str, state_dir: Path) -> int:
    """Start the sandbox and the proxy, install the scenario, serve until SIGINT/SIGTERM.

    Refused before anything is written when the listen address is taken or another demo
    uses ``state_dir``.
    """
    from klockproxy.service import parse_listen

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _only_demo_in(state_dir):
        _check_listen(*parse_listen(listen))
        return await _run_demo(listen, state_dir)


async def _run_demo(listen: str, state_dir: Path) -> int:
    from klockproxy.cluster.private_files import write_private
    from klockproxy.cluster.upstream import UpstreamConfig
    from klockproxy.proxy.serve import LocalProxy, ServeSettings
    from klockproxy.sandbox.server import Sandbox
    from klockproxy.service import serve_until_signal

    async with Sandbox(state_dir=state_dir / "sandbox") as sandbox:
        admin_kubeconfig = sandbox.write_kubeconfig(state_dir / "sandbox-admin.kubeconfig")
        ca_file, token_file = state_dir / "sandbox-ca.crt", state_dir / "sandbox-admin.token"
        write_private(ca_file, sandbox.ca_pem)
        write_private(token_file, sandbox.admin_token.encode())
        api = Upstream(
            UpstreamConfig(server=sandbox.url, ca_file=str(ca_file), token_file=str(token_file))
        )
        try:
            await install_scenario(api)
        finally:
            await api.close()
        out = state_dir / "kubeconfig"
        proxy = LocalProxy(
            ServeSettings(
                write_kubeconfig=out,
                kubeconfig=str(admin_kubeconfig),
                listen=listen,
                locks=("cluster",),
                state_dir=state_dir,
            )
        )
        return await serve_until_signal(proxy, announce=try_these(out))


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy demo``; returns the exit code."""
    from klockproxy.proxy.master import quiet_mitmproxy_logging
    from klockproxy.service import parse_listen

    quiet_mitmproxy_logging()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # The sandbox logs every request at INFO: keep the demo's terminal readable.
        for name in ("klockproxy.sandbox", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        parse_listen(args.listen)
        state_dir = Path(args.state_dir).expanduser().resolve()
        return asyncio.run(run_demo(args.listen, state_dir))
    except KlockProxyError as e:
        print(f"klockproxy demo: {e}")
        return 1
