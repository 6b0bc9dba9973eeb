"""Writing kubeconfig files (the sandbox's and the proxy's)."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from klockproxy.core.errors import ConfigError

logger = logging.getLogger(__name__)


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _user_entry(user: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a user entry; PEM bytes given for ``*-data`` keys are base64-encoded."""
    out: dict[str, Any] = {}
    for key, value in user.items():
        if key.endswith("-data") and isinstance(value, bytes):
            out[key] = _b64(value)
        else:
            out[key] = value
    return out


def build_kubeconfig(
    *,
    server: str,
    ca_pem: bytes,
    users: Mapping[str, Mapping[str, Any]],
    current_user: str,
    cluster_name: str = "sandbox",
    namespace: str = "default",
) -> dict[str, Any]:
    """A kubeconfig dict with one cluster and one context per user, named after the user.

    A user entry is a kubeconfig ``user`` mapping, e.g. ``{"token": ...}`` or
    ``{"client-certificate-data": PEM bytes or base64 str, "client-key-data": ...}``.
    """
    if current_user not in users:
        raise ConfigError(f"current user {current_user!r} is not among the users")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": name, "user": _user_entry(entry)} for name, entry in users.items()],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": cluster_name, "user": name, "namespace": namespace},
            }
            for name in users
        ],
        "current-context": current_user,
    }


def write_kubeconfig(
    path: Path | str,
    *,
    server: str,
    ca_pem: bytes,
    users: Mapping[str, Mapping[str, Any]],
    current_user: str,
    cluster_name: str = "sandbox",
    namespace: str = "default",
) -> Path:
    """Write a kubeconfig (mode 0600: it holds credentials); returns its path."""
    config = build_kubeconfig(
        server=server,
        ca_pem=ca_pem,
        users=users,
        current_user=current_user,
        cluster_name=cluster_name,
        namespace=namespace,
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    logger.debug("wrote kubeconfig %s (%d contexts)", p, len(users))
    return p
