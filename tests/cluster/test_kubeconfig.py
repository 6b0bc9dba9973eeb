"""Kubeconfigs: reading a context (what local mode forwards with) and writing them."""

from __future__ import annotations

import base64
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.kubeconfig import (
    OwnCredentials,
    load_upstream,
    own_upstream,
    write_kubeconfig,
)
from klockproxy.core.errors import ConfigError


def test_one_context_per_user_and_mode_0600(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "kc",
        server="https://127.0.0.1:1234",
        ca_pem=b"CA PEM",
        users={
            "admin": {"token": "t1"},
            "alice": {"client-certificate-data": b"CERT", "client-key-data": b"KEY"},
        },
        current_user="admin",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = yaml.safe_load(path.read_text())
    assert cfg["current-context"] == "admin"
    assert [c["name"] for c in cfg["contexts"]] == ["admin", "alice"]
    assert cfg["contexts"][1]["context"] == {
        "cluster": "sandbox",
        "user": "alice",
        "namespace": "default",
    }
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:1234"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"CA PEM"
    alice = cfg["users"][1]["user"]
    assert base64.b64decode(alice["client-certificate-data"]) == b"CERT"
    assert cfg["users"][0]["user"] == {"token": "t1"}


def test_current_user_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_kubeconfig(
            tmp_path / "kc", server="https://x", ca_pem=b"", users={}, current_user="admin"
        )


# Reading a context (what local mode forwards with)


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
    # The user's own file, not a copy: the proxy re-reads it when it rotates.
    assert robot.upstream.token_file == str(token_file)
    assert robot.refresh is None  # never rewrite the user's own file


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


# ---------------------------------------------------------------------------------------------
# The real command, as a subprocess, against a sandbox, with real kubectl.


def test_a_missing_kubeconfig_file_is_named_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.kubeconfig"
    expected = f"kubeconfig {missing}: the file does not exist"
    with pytest.raises(ConfigError, match=expected) as raised:
        load_upstream(str(missing), None, tmp_path / "files")
    assert "Invalid kube-config" not in str(raised.value)
    # The same through $KUBECONFIG.
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        load_upstream(None, None, tmp_path / "files")


def test_in_cluster_upstream_uses_the_pods_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from klockproxy.cluster.kubeconfig import in_cluster_upstream

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config there
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("t")
    (account / "ca.crt").write_text("ca")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = in_cluster_upstream(env, account)
    assert config is not None
    assert config.server == "https://10.96.0.1:443"
    assert (config.ca_file, config.token_file) == (str(account / "ca.crt"), str(account / "token"))
    v6 = in_cluster_upstream({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, account)
    assert v6 is not None and v6.server == "https://[fd00::1]:443"
    # Not in a pod, or told otherwise: no in-cluster configuration.
    assert in_cluster_upstream({}, account) is None
    assert in_cluster_upstream({**env, "KUBECONFIG": "/x"}, account) is None
    assert in_cluster_upstream(env, tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("where", "in_pod", "pod_wins"),
    [
        (OwnCredentials.KUBECONFIG, False, False),
        (OwnCredentials.KUBECONFIG_THEN_POD, True, False),
        (OwnCredentials.POD_THEN_KUBECONFIG, True, True),
    ],
)
def test_a_service_s_own_credentials_come_from_where_its_help_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: OwnCredentials,
    in_pod: bool,
    pod_wins: bool,
) -> None:
    """The order each mode's ``--kubeconfig`` help names is the order it reads them in."""
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("t")
    (account / "ca.crt").write_text("ca")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    pod = "https://10.96.0.1:443"
    files = tmp_path / "files"
    # In a pod without a kubeconfig: its service account, unless the mode never uses it.
    if in_pod:
        upstream, target = own_upstream(where, None, None, files, account)
        assert (upstream.server, target) == (pod, None)
    else:
        with pytest.raises(ConfigError):
            own_upstream(where, None, None, files, account)
    # The pod also has ~/.kube/config: the order decides.
    kc = home / ".kube" / "config"
    write_kubeconfig(
        kc, server="https://kc:6443", ca_pem=b"", users={"u": {"token": "x"}}, current_user="u"
    )
    upstream, target = own_upstream(where, None, None, files, account)
    assert upstream.server == (pod if pod_wins else "https://kc:6443")
    assert (target is None) == pod_wins
    # --kubeconfig given: always that file.
    upstream, target = own_upstream(where, str(kc), None, files, account)
    assert upstream.server == "https://kc:6443" and target is not None
