"""Kubeconfig files: reading a context's server and credentials (through the official
kubernetes client, which knows every credential kind and exec plugins) and writing the
kubeconfigs the sandbox and the proxy hand out."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from klockproxy.cluster.private_files import replace_private, write_private
from klockproxy.core.errors import ConfigError

if TYPE_CHECKING:
    from klockproxy.cluster.upstream import UpstreamConfig

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
    """Write a kubeconfig (mode 0600: it holds credentials); returns its path.

    It has one cluster and one context per user, named after the user. A user entry is a
    kubeconfig ``user`` mapping, e.g. ``{"token": ...}`` or ``{"client-certificate-data":
    PEM bytes or base64 str, "client-key-data": ...}``.
    """
    if current_user not in users:
        raise ConfigError(f"current user {current_user!r} is not among the users")
    config = {
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
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    replace_private(p, yaml.safe_dump(config, sort_keys=False).encode())
    logger.debug("wrote kubeconfig %s (%d contexts)", p, len(users))
    return p


@dataclass(frozen=True)
class KubeconfigTarget:
    """What the chosen kubeconfig context says: the upstream and the default namespace."""

    upstream: UpstreamConfig
    namespace: str
    context: str
    # Re-reads an expiring (exec plugin) token; None when the credentials do not expire.
    refresh: Callable[[], str | None] | None = None


def load_upstream(kubeconfig: str | None, context: str | None, files_dir: Path) -> KubeconfigTarget:
    """Read a kubeconfig context with the official client and copy its credentials into
    ``files_dir`` (mode 0600), so that mitmproxy and the lookups can use them.

    Handles client certificates (file or inline data), bearer tokens, token files (used in
    place) and exec plugins (run here; the token is written to a file, and ``refresh`` runs
    the plugin again once that token expires). With no ``kubeconfig``, the first file of
    $KUBECONFIG is read, else ~/.kube/config. Raises ConfigError.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from klockproxy.cluster.upstream import UpstreamConfig

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    if path is None:
        path = os.path.expanduser("~/.kube/config")
    if not os.path.exists(path):
        # The client would call a missing file "Invalid kube-config file".
        raise ConfigError(f"cannot use kubeconfig {path}: the file does not exist")
    try:
        config.load_kube_config(
            config_file=path, context=context, client_configuration=cfg, persist_config=False
        )
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"cannot use kubeconfig {path}: {e}") from e
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    ctx_name = str((chosen or {}).get("name") or context or "")
    namespace = str(((chosen or {}).get("context") or {}).get("namespace") or "default")

    server = str(cfg.host or "")
    if not server.startswith("https://"):
        raise ConfigError(f"context {ctx_name!r}: the server {server!r} is not an https:// URL")
    files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def copy(src: str | None, name: str) -> str | None:
        # The client writes inline data to temporary files it deletes at exit: keep our own.
        if not src:
            return None
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise ConfigError(f"context {ctx_name!r}: cannot read {src}: {e}") from e
        dest = files_dir / name
        write_private(dest, data)
        return str(dest)

    ca_file = copy(cfg.ssl_ca_cert, "upstream-ca.crt")
    cert_file = copy(cfg.cert_file, "upstream-client.crt")
    key_file = copy(cfg.key_file, "upstream-client.key")
    token_file = None
    token = _bearer_token(cfg)
    user_token_file = _user_token_file(path, chosen)
    if user_token_file is not None and token is not None:
        # Use the user's own file: it is re-read when it changes (rotated projected tokens).
        token_file = user_token_file
    elif token is not None:
        token_file = str(files_dir / "upstream-token")
        write_private(Path(token_file), token.encode())
    if cert_file is None and token_file is None:
        raise ConfigError(
            f"context {ctx_name!r} has no credentials klockproxy can use "
            "(client certificate, token, token file or exec plugin)"
        )
    upstream = UpstreamConfig(
        server=server.rstrip("/"),
        ca_file=ca_file,
        token_file=token_file,
        client_cert_file=cert_file,
        client_key_file=key_file,
        insecure=not cfg.verify_ssl,
    )
    refresh: Callable[[], str | None] | None = None
    hook = getattr(cfg, "refresh_api_key_hook", None)
    # Only our own copy is ever rewritten; the user's tokenFile is re-read where it is.
    if token is not None and user_token_file is None and callable(hook):

        def refresh() -> str | None:
            # Re-runs an exec plugin once its token has expired (the client's own logic).
            hook(cfg)
            return _bearer_token(cfg)

    return KubeconfigTarget(
        upstream=upstream, namespace=namespace, context=ctx_name, refresh=refresh
    )


def _user_token_file(kubeconfig: str, context: Any) -> str | None:
    """The ``tokenFile`` of the context's user (absolute), when it has one and no exec plugin."""
    import yaml

    user_name = ((context or {}).get("context") or {}).get("user")
    try:
        data = yaml.safe_load(Path(kubeconfig).read_text())
    except (OSError, yaml.YAMLError):
        return None
    for entry in (data or {}).get("users") or []:
        if isinstance(entry, dict) and entry.get("name") == user_name:
            user = entry.get("user") or {}
            token_file = user.get("tokenFile")
            if token_file and not user.get("token") and not user.get("exec"):
                return str((Path(kubeconfig).parent / str(token_file)).resolve())
    return None


def _bearer_token(cfg: Any) -> str | None:
    """The bearer token the client configuration would send, without the prefix."""
    keys = cfg.api_key or {}
    value = keys.get("BearerToken") or keys.get("authorization")
    if not value:
        return None
    value = str(value).strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip()
    if rest and scheme.lower() == "basic":
        raise ConfigError("basic authentication (username/password) is not supported")
    return value


# Where a pod finds its service account's credentials (the kubelet mounts them there).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class OwnCredentials(Enum):
    """Where a service finds its own credentials when neither ``--kubeconfig`` nor
    ``--context`` is given (``own_upstream``); the value is how its ``--help`` says it."""

    KUBECONFIG = "$KUBECONFIG or ~/.kube/config"
    KUBECONFIG_THEN_POD = "$KUBECONFIG, ~/.kube/config, or in a pod its service account"
    POD_THEN_KUBECONFIG = "in a pod its service account, else $KUBECONFIG or ~/.kube/config"


def own_upstream(
    where: OwnCredentials,
    kubeconfig: str | None,
    context: str | None,
    files_dir: Path,
    account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> tuple[UpstreamConfig, KubeconfigTarget | None]:
    """The API server and a service's own credentials: the kubeconfig (and context) given,
    else as ``where`` says; the kubeconfig's target too (None for a pod's service account).
    Blocking (an exec plugin may run): call it in a thread from the event loop."""
    if kubeconfig is None and context is None and where is not OwnCredentials.KUBECONFIG:
        first = where is OwnCredentials.POD_THEN_KUBECONFIG
        pod = in_cluster_upstream(account_dir=account_dir, before_kubeconfig=first)
        if pod is not None:
            return pod, None
    target = load_upstream(kubeconfig, context, files_dir)
    return target.upstream, target


def in_cluster_upstream(
    environ: Mapping[str, str] | None = None,
    account_dir: Path = SERVICE_ACCOUNT_DIR,
    *,
    before_kubeconfig: bool = False,
) -> UpstreamConfig | None:
    """The API server and the pod's own service account when running in a pod (None
    otherwise, or when the token or the CA is missing). The token file is re-read when the
    kubelet rotates it.

    Where a pod also has $KUBECONFIG or ~/.kube/config, that kubeconfig wins (None here)
    unless ``before_kubeconfig`` (``OwnCredentials``).
    """
    from klockproxy.cluster.upstream import UpstreamConfig

    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    if not before_kubeconfig and (
        env.get("KUBECONFIG") or Path(os.path.expanduser("~/.kube/config")).exists()
    ):
        return None
    token, ca = account_dir / "token", account_dir / "ca.crt"
    if not token.exists() or not ca.exists():
        return None
    shown = f"[{host}]" if ":" in host else host
    return UpstreamConfig(server=f"https://{shown}:{port}", ca_file=str(ca), token_file=str(token))
