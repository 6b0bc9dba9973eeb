"""/readyz of the gateway: not ready while its lock source has not synced or the API server
does not answer (here: nothing listens where the kubeconfig points)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.proxy.gateway import GatewaySettings, GatewayThread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_not_ready_without_synced_locks_and_an_answering_api_server(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("nowhere")
    kubeconfig = write_kubeconfig(
        tmp_path / "kc",
        server=f"https://127.0.0.1:{_free_port()}",
        ca_pem=ca.cert_pem,
        users={"me": {"token": "t"}},
        current_user="me",
    )
    thread = GatewayThread(
        GatewaySettings(
            kubeconfig=str(kubeconfig),
            listen="127.0.0.1:0",
            state_dir=tmp_path / "state",
            locks=("cluster",),
            health_listen="127.0.0.1:0",
            locks_ready_timeout=0.2,
        )
    ).start()
    try:
        health = thread.service.health_url
        with urllib.request.urlopen(health + "/healthz", timeout=30) as resp:
            assert resp.status == 200
        try:
            urllib.request.urlopen(health + "/readyz", timeout=30)
        except urllib.error.HTTPError as e:
            assert e.code == 503
            text = e.read().decode()
        else:
            raise AssertionError("/readyz answered 200")
        assert "lock sources have not synced" in text
        assert "the API server does not answer" in text
    finally:
        thread.stop()
