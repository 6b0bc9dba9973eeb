"""`klockproxy serve`: reading the user's kubeconfig, and the real command against a sandbox."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from klockproxy.certs import CertificateAuthority
from klockproxy.core.errors import ConfigError
from klockproxy.kubeconfig import write_kubeconfig
from klockproxy.serve import load_upstream, parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["host:http", "127.0.0.1:70000"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test cluster CA")


def _mode(path: str | None) -> int:
    assert path is not None
    return stat.S_IMODE(os.stat(path).st_mode)


def test_reads_inline_client_certificate(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert, key = ca.issue_client("admin", ["system:masters"])
    kc = write_kubeconfig(
        tmp_path / "config",
        server="https://127.0.0.1:6443",
        ca_pem=ca.cert_pem,
        users={"admin": {"client-certificate-data": cert, "client-key-data": key}},
        current_user="admin",
        namespace="shop",
    )
    target = load_upstream(str(kc), None, tmp_path / "files")
    up = target.upstream
    assert up.server == "https://127.0.0.1:6443"
    assert target.namespace == "shop"
    assert up.token_file is None
    assert Path(up.client_cert_file or "").read_bytes() == cert
    assert Path(up.client_key_file or "").read_bytes() == key
    assert Path(up.ca_file or "").read_bytes() == ca.cert_pem
    # Private copies: nobody else on the machine may read them.
    assert _mode(up.client_key_file) == 0o600
    assert all(Path(p).parent == tmp_path / "files" for p in (up.ca_file, up.client_cert_file))


def test_reads_token_and_token_file_and_context(tmp_path: Path, ca: CertificateAuthority) -> None:
    token_file = tmp_path / "sa-token"
    token_file.write_text("from-a-file\n")
    kc = write_kubeconfig(
        tmp_path / "config",
        server="https://10.0.0.1:6443",
        ca_pem=ca.cert_pem,
        users={"alice": {"token": "alice-token"}, "robot": {"tokenFile": str(token_file)}},
        current_user="alice",
    )
    alice = load_upstream(str(kc), None, tmp_path / "a").upstream
    assert Path(alice.token_file or "").read_text() == "alice-token"
    assert _mode(alice.token_file) == 0o600
    robot = load_upstream(str(kc), "robot", tmp_path / "r")
    assert robot.context == "robot"
    assert Path(robot.upstream.token_file or "").read_text() == "from-a-file"


def test_runs_exec_plugins(tmp_path: Path, ca: CertificateAuthority) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'from-exec'}}))\n"
    )
    kc = write_kubeconfig(
        tmp_path / "config",
        server="https://10.0.0.1:6443",
        ca_pem=ca.cert_pem,
        users={
            "sso": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": sys.executable,
                    "args": [str(plugin)],
                    "interactiveMode": "Never",
                }
            }
        },
        current_user="sso",
    )
    target = load_upstream(str(kc), None, tmp_path / "files")
    assert Path(target.upstream.token_file or "").read_text() == "from-exec"
    assert target.refresh is not None
    assert target.refresh() == "from-exec"


def test_unusable_kubeconfigs_are_config_errors(tmp_path: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="cannot use kubeconfig"):
        load_upstream(str(tmp_path / "missing"), None, tmp_path / "f")
    kc = write_kubeconfig(
        tmp_path / "config",
        server="https://10.0.0.1:6443",
        ca_pem=ca.cert_pem,
        users={"nobody": {}},
        current_user="nobody",
    )
    with pytest.raises(ConfigError, match="no credentials"):
        load_upstream(str(kc), None, tmp_path / "f")
    with pytest.raises(ConfigError, match="cannot use kubeconfig"):
        load_upstream(str(kc), "no-such-context", tmp_path / "f")
    data = yaml.safe_load(kc.read_text())
    data["clusters"][0]["cluster"]["server"] = "http://10.0.0.1:8080"
    data["users"][0]["user"] = {"token": "t"}
    kc.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="not an https"):
        load_upstream(str(kc), None, tmp_path / "f")
