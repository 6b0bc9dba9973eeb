"""``klockproxy webhook``: the same Locks enforced as a validating admission webhook.

```
klockproxy webhook [--kubeconfig PATH] [--context NAME] [--listen 0.0.0.0:9443]
                   [--tls-cert FILE --tls-key FILE | --cert-secret NAMESPACE/NAME]
                   [--webhook-config NAME] [--locks cluster|PATH ...]
                   [--health-listen HOST:PORT] [--audit-log PATH|-]
```

Without ``--kubeconfig``/``--context`` in a pod, the pod's service account is used.
"""

from __future__ import annotations

import argparse
import logging

from klockproxy.core.errors import ConfigError
from klockproxy.service import (
    add_service_options,
    run_service,
    settings_from_options,
)
from klockproxy.webhook.server import WebhookServer, WebhookSettings

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``klockproxy webhook``."""
    add_service_options(parser, WebhookSettings, WebhookServer.option_texts)
    parser.add_argument(
        "--cert-secret",
        metavar="NAMESPACE/NAME",
        help="keep a CA and the serving certificate in this Secret (created if missing, "
        "renewed before expiry) instead of --tls-cert/--tls-key",
    )
    parser.add_argument(
        "--webhook-config",
        metavar="NAME",
        help="ValidatingWebhookConfiguration whose caBundle gets the CA of --cert-secret",
    )


def settings_from_args(args: argparse.Namespace) -> WebhookSettings:
    """WebhookSettings from parsed arguments; ConfigError for a contradictory combination."""
    has_files = bool(args.tls_cert or args.tls_key)
    if has_files and not (args.tls_cert and args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if has_files and args.cert_secret:
        raise ConfigError("give either --tls-cert/--tls-key or --cert-secret, not both")
    if not has_files and not args.cert_secret:
        raise ConfigError("a webhook serves HTTPS: give --tls-cert/--tls-key or --cert-secret")
    if args.cert_secret:
        namespace, slash, name = args.cert_secret.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ConfigError(f"--cert-secret {args.cert_secret!r}: expected NAMESPACE/NAME")
    if args.webhook_config and not args.cert_secret:
        raise ConfigError(
            "--webhook-config names where --cert-secret injects its CA; with --tls-cert, "
            "whoever issued the certificate sets the caBundle (cert-manager: the "
            "cert-manager.io/inject-ca-from annotation)"
        )
    return settings_from_options(WebhookSettings, args)


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy webhook``; returns the exit code."""
    return run_service(lambda: WebhookServer(settings_from_args(args)))
