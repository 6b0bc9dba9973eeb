"""``klockproxy check``: would these Locks allow this operation on these objects? (offline)

For people and CI pipelines::

    klockproxy check --locks PATH [--locks PATH ...] --as USER [--as-uid UID] [--as-group G ...]
                     --operation CREATE|UPDATE|DELETE|CONNECT -f OBJECTS.yaml [--old OLD.yaml]
                     [-n NAMESPACE]

Prints ``allowed <kind>/<name>`` or ``denied <kind>/<name>: <message>`` per object. Exit code
0 when every object is allowed, 1 when any is denied, 2 on bad input (the reason on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from klockproxy.core.codec import MalformedDocument, load_yaml_documents
from klockproxy.core.engine import Engine
from klockproxy.core.errors import DecodeError, KlockProxyError, ManifestError
from klockproxy.core.locks import Lock, load_locks_from_path
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo

logger = logging.getLogger(__name__)

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2

# Plurals that the simple English rule below gets wrong, for the kinds people lock most.
_IRREGULAR_PLURALS: dict[str, str] = {
    "endpoints": "endpoints",
    "networkpolicy": "networkpolicies",
    "ingressclass": "ingressclasses",
    "storageclass": "storageclasses",
    "priorityclass": "priorityclasses",
    "runtimeclass": "runtimeclasses",
}

# Cluster-scoped kinds: no Lock (always namespaced) can apply to them.
_CLUSTER_SCOPED: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "Namespace"),
        ("", "Node"),
        ("", "PersistentVolume"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("storage.k8s.io", "StorageClass"),
        ("scheduling.k8s.io", "PriorityClass"),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    }
)


@dataclass(frozen=True, slots=True)
class _Manifest:
    """One object from a manifest file, reduced to what a decision needs."""

    group: str
    version: str
    kind: str
    namespace: str
    name: str
    labels: Mapping[str, str]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.group, self.kind, self.namespace, self.name)

    @property
    def display(self) -> str:
        """``pod/my-pod``, ``deployment.apps/web``: as kubectl names objects."""
        kind = self.kind.lower()
        return f"{kind}.{self.group}/{self.name}" if self.group else f"{kind}/{self.name}"


def resource_for_kind(kind: str) -> str:
    """The resource (plural, lower case) that serves ``kind``: ``Pod`` -> ``pods``."""
    lower = kind.lower()
    if lower in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[lower]
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``check``'s arguments."""
    parser.add_argument(
        "--locks",
        action="append",
        required=True,
        metavar="PATH",
        help="a Lock file, or a directory of *.yaml|*.yml|*.json Lock files (repeatable)",
    )
    parser.add_argument(
        "--as", dest="as_user", required=True, metavar="USER", help="the caller's username"
    )
    parser.add_argument("--as-uid", default="", metavar="UID", help="the caller's uid")
    parser.add_argument(
        "--as-group",
        action="append",
        default=[],
        metavar="G",
        help="a group of the caller (repeatable; Locks ignore groups, as in Klock)",
    )
    parser.add_argument(
        "--operation",
        required=True,
        type=str.upper,
        choices=[op.value for op in Operation],
        help="the admission operation to judge (any case)",
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="filenames",
        action="append",
        required=True,
        metavar="OBJECTS.yaml",
        help="the objects (many YAML documents, or a List); '-' reads stdin (repeatable)",
    )
    parser.add_argument(
        "--old",
        metavar="OLD.yaml",
        help="UPDATE only: the objects as they are now (default: each object is its own old one)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="namespace of objects and Locks that name none (default: default)",
    )


def _read_documents(path: str) -> list[object]:
    source = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{source}: cannot read: {e}") from e
    try:
        return load_yaml_documents(text, "YAML")
    except MalformedDocument as e:
        raise ManifestError(f"{source}: malformed {e.language}{e.where}: {e.problem}") from e
    except DecodeError as e:
        raise ManifestError(f"{source}: malformed YAML: {e}") from e


def _objects(docs: list[object]) -> Iterator[tuple[int, object]]:
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            items = doc["items"]
            if not isinstance(items, list):
                raise ManifestError(f"document {index}: items must be a list")
            for item in items:
                yield index, item
        else:
            yield index, doc


def _manifest(obj: object, where: str, namespace: str, operation: Operation) -> _Manifest:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: an object must be a mapping, got {type(obj).__name__}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise ManifestError(f"{where}: apiVersion is required")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(f"{where}: kind is required")
    group, _, version = api_version.rpartition("/")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise ManifestError(f"{where}: {kind} has no metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        generate = metadata.get("generateName")
        if operation is Operation.CREATE and isinstance(generate, str) and generate:
            name = generate
        else:
            raise ManifestError(f"{where}: {kind} has no metadata.name")
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ManifestError(
            f"{where}: {kind} {name}: metadata.labels must map strings to strings "
            "(quote numbers and booleans)"
        )
    ns = metadata.get("namespace")
    if (group, kind) in _CLUSTER_SCOPED:
        ns = ""
    elif not ns:
        ns = namespace
    elif not isinstance(ns, str):
        raise ManifestError(f"{where}: {kind} {name}: metadata.namespace must be a string")
    return _Manifest(group, version, kind, ns, name, labels)


def _load_manifests(paths: list[str], namespace: str, operation: Operation) -> list[_Manifest]:
    out: list[_Manifest] = []
    for path in paths:
        for index, obj in _objects(_read_documents(path)):
            source = "<stdin>" if path == "-" else path
            out.append(_manifest(obj, f"{source}, document {index}", namespace, operation))
    return out


def _load_locks(paths: list[str], namespace: str) -> list[Lock]:
    locks: list[Lock] = []
    seen: dict[str, str] = {}
    for path in paths:
        for lock in load_locks_from_path(path, default_namespace=namespace):
            if lock.key in seen:
                raise ManifestError(f"{path}: duplicate lock {lock.key} (also in {seen[lock.key]})")
            seen[lock.key] = path
            locks.append(lock)
    return locks


def _judge(args: argparse.Namespace) -> int:
    operation = Operation(args.operation)
    if args.old is not None and operation is not Operation.UPDATE:
        raise ManifestError("--old only applies to --operation UPDATE")
    engine = Engine(_load_locks(args.locks, args.namespace))
    objects = _load_manifests(args.filenames, args.namespace, operation)
    olds: dict[tuple[str, str, str, str], _Manifest] = {}
    if args.old is not None:
        for old in _load_manifests([args.old], args.namespace, operation):
            olds[old.identity] = old
    user = UserInfo(args.as_user, uid=args.as_uid, groups=tuple(args.as_group))
    logger.debug("judging %d objects against %d locks", len(objects), engine.lock_count)

    any_denied = False
    for obj in objects:
        old_labels: Mapping[str, str] | None
        new_labels: Mapping[str, str] | None
        if operation is Operation.CREATE:
            old_labels, new_labels = None, obj.labels
        elif operation is Operation.UPDATE:
            if args.old is None:
                old_labels = obj.labels
            else:
                # An object missing from --old is judged on its new labels (a PUT that creates).
                previous = olds.get(obj.identity)
                old_labels = previous.labels if previous is not None else None
            new_labels = obj.labels
        else:
            old_labels, new_labels = obj.labels, None
        decision = engine.decide(
            AdmissionInput(
                operation=operation,
                namespace=obj.namespace,
                resource=ResourceRef(obj.group, obj.version, resource_for_kind(obj.kind)),
                name=obj.name,
                user=user,
                old_labels=old_labels,
                new_labels=new_labels,
                kind=obj.kind,
            )
        )
        if decision.allowed:
            print(f"allowed {obj.display}")
        else:
            any_denied = True
            print(f"denied {obj.display}: {decision.message}")
    return EXIT_DENIED if any_denied else EXIT_ALLOWED


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy check``; returns 0 (all allowed), 1 (any denied) or 2 (bad input)."""
    try:
        return _judge(args)
    except KlockProxyError as e:
        print(f"klockproxy check: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
