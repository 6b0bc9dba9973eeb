"""``klockproxy crd``: print the Lock CustomResourceDefinition (Klock-compatible).

``kubectl apply -f <(klockproxy crd)`` installs it; the sandbox and tests load it with
:func:`crd_object`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import Any

import yaml

from klockproxy.core.errors import ConfigError

CRD_RESOURCE = "data/lock-crd.yaml"
CRD_NAME = "locks.klock.rnemet.dev"


def crd_text() -> str:
    """The CRD manifest exactly as shipped in the package."""
    try:
        return resources.files("klockproxy").joinpath(CRD_RESOURCE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        # Only a broken installation gets here: the file is package data.
        raise ConfigError(f"the packaged Lock CRD cannot be read: {e}") from e


def crd_object() -> dict[str, Any]:
    """The CRD as a dict (what the API server receives from ``kubectl apply``)."""
    obj = yaml.safe_load(crd_text())
    if not isinstance(obj, dict):
        raise ConfigError("the packaged Lock CRD is not a YAML mapping")
    return obj


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``crd`` takes no arguments."""
    parser.epilog = "example: klockproxy crd | kubectl apply -f -"


def run(args: argparse.Namespace) -> int:
    """Print the CRD to stdout; exit 0 (2 if the installation is broken)."""
    try:
        text = crd_text()
    except ConfigError as e:
        print(f"klockproxy crd: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
