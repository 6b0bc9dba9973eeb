"""The Lock model and its loader/validator.

A Lock (``klock.rnemet.dev/v1``) is read from YAML text (one or many documents, ``LockList``,
``kind: List``), from already-decoded objects (the cluster lock source), or from a file or a
directory of files. Validation is strict where Klock is silent: an unknown operation, an
unknown spec field or a malformed matcher expression is an error naming the source, the
document, the lock and the field, because a typo must never silently weaken a lock.

A Lock object the cluster holds but that fails validation cannot be enforced as written, and
cannot be ignored either (Klock would still enforce the parts it understands). It becomes an
``InvalidLock``: its namespace, name and the fault. The engine refuses every mutation in that
namespace (except of Lock objects, so that it can be fixed or deleted) while it exists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from klockproxy.core.codec import (
    MalformedDocument,
    StreamedMapping,
    iter_yaml_documents_streaming,
    json_type_name,
    load_json,
    load_yaml_documents,
)
from klockproxy.core.errors import DecodeError, ExpressionError, LockValidationError
from klockproxy.core.expressions import CompiledExpression, compile_expression
from klockproxy.core.types import Operation

logger = logging.getLogger(__name__)

GROUP = "klock.rnemet.dev"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Lock"
LIST_KINDS = frozenset({"LockList", "List"})
LOCK_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# "status" cannot weaken a lock; it is accepted (and ignored) so that a Lock read from a
# cluster whose CRD has a status stays enforced.
_TOP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS = frozenset({"operations", "matcher", "exclusive"})
_EXCLUSIVE_FIELDS = frozenset({"name", "uid"})

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Lock:
    """One validated Lock.

    ``matcher`` is sorted by key; an empty matcher matches every object of the namespace
    (Klock's namespace-wide freeze). ``exclusive_name``/``exclusive_uid`` are None when unset
    (an empty string counts as unset, as in Klock).
    """

    namespace: str
    name: str
    uid: str
    operations: frozenset[Operation]
    matcher: tuple[tuple[str, CompiledExpression], ...]
    exclusive_name: str | None = None
    exclusive_uid: str | None = None

    @property
    def key(self) -> str:
        """``namespace/name``: how messages and lock sources name the lock."""
        return f"{self.namespace}/{self.name}"

    @property
    def has_exclusive(self) -> bool:
        """Whether somebody is exempt from this lock."""
        return self.exclusive_name is not None or self.exclusive_uid is not None

    def matcher_text(self) -> str:
        """The matcher as Go prints a ``map[string]string`` (Klock's denial text).

        Keys are sorted, values are the raw expressions: ``map[aura:red element:^wind]``.
        """
        return "map[" + " ".join(f"{k}:{e.source}" for k, e in self.matcher) + "]"

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every matcher key's expression matches (absent label = ``""``)."""
        # A plain loop: this is the engine's inner loop and a generator costs twice as much.
        for key, expr in self.matcher:  # noqa: SIM110
            if not expr.evaluate(labels.get(key, "")):
                return False
        return True


@dataclass(frozen=True, slots=True)
class InvalidLock:
    """A Lock object that failed validation: the engine refuses every mutation in its namespace.

    ``reason`` is the validation fault, field first when known:
    ``spec.operations[0]: unknown operation 'UPDTAE' (...)``. An invalid Lock exempts nobody:
    its ``exclusive`` cannot be trusted any more than the rest of it.
    """

    namespace: str
    name: str
    reason: str

    @property
    def key(self) -> str:
        """``namespace/name``, as for a Lock."""
        return f"{self.namespace}/{self.name}"

    @property
    def has_exclusive(self) -> bool:
        """Always False: nobody is exempt from an invalid Lock."""
        return False

    @classmethod
    def from_error(cls, namespace: str, name: str, error: LockValidationError) -> InvalidLock:
        """The invalid Lock ``namespace/name`` with the fault ``error`` describes."""
        reason = error.reason if error.field is None else f"{error.field}: {error.reason}"
        return cls(namespace=namespace, name=name, reason=reason)


def is_valid_label_key(key: str) -> bool:
    """A Kubernetes label key: optional DNS-subdomain prefix and ``/``, then a <=63 char name."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _is_dns_subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def _is_dns_label(value: str) -> bool:
    return 0 < len(value) <= 63 and _DNS_LABEL.fullmatch(value) is not None


def _type_name(value: object) -> str:
    return json_type_name(value, yaml=True)


class _Ctx:
    """Where we are, so every error names source, document, lock and field prefix."""

    def __init__(self, source: str, document: int | None, prefix: str) -> None:
        self.source = source
        self.document = document
        self.prefix = prefix
        self.lock: str | None = None

    def error(self, reason: str, field: str | None = None) -> LockValidationError:
        full = None if field is None else f"{self.prefix}{field}"
        return LockValidationError(
            reason, source=self.source, document=self.document, lock=self.lock, field=full
        )


def _validate(obj: object, ctx: _Ctx, default_namespace: str | None) -> Lock:
    if not isinstance(obj, dict):
        raise ctx.error(f"a Lock must be a mapping, got {_type_name(obj)}")
    metadata = obj.get("metadata")
    # Name the lock as early as possible, so even apiVersion errors say which lock.
    if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
        ns = metadata.get("namespace")
        ns_text = ns if isinstance(ns, str) and ns else (default_namespace or "")
        ctx.lock = f"{ns_text}/{metadata['name']}"

    api_version = obj.get("apiVersion")
    if api_version != API_VERSION:
        raise ctx.error(f"apiVersion must be {API_VERSION!r}, got {api_version!r}", "apiVersion")
    kind = obj.get("kind")
    if kind != KIND:
        raise ctx.error(f"kind must be {KIND!r}, got {kind!r}", "kind")
    for top in obj:
        if top not in _TOP_FIELDS:
            raise ctx.error(f"unknown field {top!r} (a Lock has {sorted(_TOP_FIELDS)})", str(top))

    if not isinstance(metadata, dict):
        raise ctx.error(f"metadata must be a mapping, got {_type_name(metadata)}", "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error("metadata.name is required (a string)", "metadata.name")
    if not _is_dns_subdomain(name):
        raise ctx.error(
            f"invalid name {name!r}: must be a DNS subdomain (lower case alphanumerics, '-' "
            "and '.', at most 253 characters)",
            "metadata.name",
        )
    namespace_raw = metadata.get("namespace")
    if namespace_raw is None or namespace_raw == "":
        if default_namespace is None:
            raise ctx.error("metadata.namespace is required", "metadata.namespace")
        namespace = default_namespace
    elif isinstance(namespace_raw, str):
        namespace = namespace_raw
    else:
        raise ctx.error(
            f"metadata.namespace must be a string, got {_type_name(namespace_raw)}",
            "metadata.namespace",
        )
    if not _is_dns_label(namespace):
        raise ctx.error(
            f"invalid namespace {namespace!r}: must be a DNS label (lower case alphanumerics "
            "and '-', at most 63 characters)",
            "metadata.namespace",
        )
    ctx.lock = f"{namespace}/{name}"
    uid = metadata.get("uid") or ""
    if not isinstance(uid, str):
        raise ctx.error(f"metadata.uid must be a string, got {_type_name(uid)}", "metadata.uid")

    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ctx.error(f"spec must be a mapping, got {_type_name(spec)}", "spec")
    for spec_field in spec:
        if spec_field not in _SPEC_FIELDS:
            raise ctx.error(
                f"unknown field {spec_field!r} (spec has {sorted(_SPEC_FIELDS)}); a typo "
                "must not silently weaken a lock",
                f"spec.{spec_field}",
            )

    operations = _operations(spec.get("operations"), ctx)
    matcher = _matcher(spec.get("matcher"), ctx)
    exclusive_name, exclusive_uid = _exclusive(spec.get("exclusive"), ctx)
    return Lock(
        namespace=namespace,
        name=name,
        uid=uid,
        operations=operations,
        matcher=matcher,
        exclusive_name=exclusive_name,
        exclusive_uid=exclusive_uid,
    )


def _operations(raw: object, ctx: _Ctx) -> frozenset[Operation]:
    if not isinstance(raw, list):
        raise ctx.error(
            f"spec.operations must be a list of operations, got {_type_name(raw)}",
            "spec.operations",
        )
    if not raw:
        raise ctx.error(
            "spec.operations is empty: the lock would forbid nothing", "spec.operations"
        )
    ops: set[Operation] = set()
    for i, item in enumerate(raw):
        where = f"spec.operations[{i}]"
        if not isinstance(item, str):
            raise ctx.error(f"operation must be a string, got {_type_name(item)}", where)
        try:
            ops.add(Operation(item.upper()))
        except ValueError:
            raise ctx.error(
                f"unknown operation {item!r} (expected one of CREATE, UPDATE, DELETE, CONNECT)",
                where,
            ) from None
    return frozenset(ops)


def _matcher(raw: object, ctx: _Ctx) -> tuple[tuple[str, CompiledExpression], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ctx.error(
            f"spec.matcher must be a mapping of label key to expression, got {_type_name(raw)}",
            "spec.matcher",
        )
    out: list[tuple[str, CompiledExpression]] = []
    for key, value in raw.items():
        where = f"spec.matcher.{key}"
        if not isinstance(key, str) or not is_valid_label_key(key):
            raise ctx.error(
                f"invalid label key {key!r}: an optional DNS-subdomain prefix and '/', then a "
                "name of at most 63 characters ([A-Za-z0-9], '-', '_', '.' inside)",
                where,
            )
        if not isinstance(value, str):
            raise ctx.error(
                f"the expression must be a string, got {_type_name(value)} {value!r} "
                "(quote it in YAML)",
                where,
            )
        try:
            compiled = compile_expression(value)
        except ExpressionError as e:
            raise ctx.error(str(e), where) from e
        out.append((key, compiled))
    out.sort(key=lambda item: item[0])
    return tuple(out)


def _exclusive(raw: object, ctx: _Ctx) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise ctx.error(
            f"spec.exclusive must be a mapping with name and/or uid, got {_type_name(raw)}",
            "spec.exclusive",
        )
    for field in raw:
        if field not in _EXCLUSIVE_FIELDS:
            raise ctx.error(
                f"unknown field {field!r} (exclusive has name and uid)", f"spec.exclusive.{field}"
            )
    values: list[str | None] = []
    for field in ("name", "uid"):
        value = raw.get(field)
        if value is not None and not isinstance(value, str):
            raise ctx.error(
                f"spec.exclusive.{field} must be a string, got {_type_name(value)}",
                f"spec.exclusive.{field}",
            )
        values.append(value or None)
    return values[0], values[1]


def _expand(doc: object, ctx_source: str, index: int) -> Iterator[tuple[object, _Ctx]]:
    """Yield each Lock candidate of one document (a Lock, a LockList or a ``kind: List``)."""
    if isinstance(doc, dict) and doc.get("kind") in LIST_KINDS:
        ctx = _Ctx(ctx_source, index, "")
        items = doc.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            raise ctx.error(f"items must be a list, got {_type_name(items)}", "items")
        for i, item in enumerate(items):
            yield item, _Ctx(ctx_source, index, f"items[{i}].")
    else:
        yield doc, _Ctx(ctx_source, index, "")


def load_locks_from_objects(
    objs: Iterable[object], *, source: str, default_namespace: str = "default"
) -> list[Lock]:
    """Validate decoded documents (each a Lock, a LockList or a ``kind: List``).

    ``None`` documents (empty YAML documents) are skipped. Raises LockValidationError naming
    the source, the document index, the lock and the field; two locks with the same
    namespace/name are an error too (one would silently replace the other).
    """
    return _drive(_objects_steps(iter(objs), source, default_namespace, lambda e: e))


# How many Locks a loading step validates before it yields (see ``lock_file_steps``).
LOAD_STEP = 16

# A lock file that defines no Lock must say so: an empty or cut-short file is far more often
# a file being rewritten (``gen > locks.yaml`` truncates it first) than a wish to unlock.
NO_LOCKS_MARKER = "# no locks"


def _objects_steps(
    docs: Iterator[object],
    source: str,
    default_namespace: str,
    on_decode_error: Callable[[DecodeError], Exception],
) -> Generator[None, None, list[Lock]]:
    locks: list[Lock] = []
    seen: dict[str, int] = {}
    index = -1
    while True:
        index += 1
        try:
            doc = next(docs)
        except StopIteration:
            return locks
        except DecodeError as e:
            raise on_decode_error(e) from e
        if doc is None:
            continue
        candidates: Iterator[tuple[object, _Ctx]]
        if isinstance(doc, StreamedMapping):
            candidates = _streamed(doc, source, index, on_decode_error)
        else:
            candidates = _expand(doc, source, index)
        for item, ctx in candidates:
            lock = _validate(item, ctx, default_namespace)
            if lock.key in seen:
                raise ctx.error(f"duplicate lock {lock.key} (also in document {seen[lock.key]})")
            seen[lock.key] = index
            locks.append(lock)
            if len(locks) % LOAD_STEP == 0:
                yield
        yield


def _streamed(
    doc: StreamedMapping,
    source: str,
    index: int,
    on_decode_error: Callable[[DecodeError], Exception],
) -> Iterator[tuple[object, _Ctx]]:
    """The Lock candidates of a document read item by item (a LockList or ``kind: List``
    of thousands is never parsed in one piece); anything else as ``_expand`` reads it."""
    items = iter(doc.items)
    position = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except DecodeError as e:
            raise on_decode_error(e) from e
        yield item, _Ctx(source, index, f"items[{position}].")
        position += 1
    head = doc.head
    if not doc.has_items:
        yield from _expand(head, source, index)
    elif head.get("kind") not in LIST_KINDS:
        # ``kind`` may follow ``items`` in the text: only now is it known not to be a list.
        yield {**head, "items": []}, _Ctx(source, index, "")


def _drive(steps: Generator[None, None, list[Lock]]) -> list[Lock]:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def lock_file_steps(
    text: str, *, source: str, default_namespace: str = "default", json: bool = False
) -> Generator[None, None, list[Lock]]:
    """Load the Locks of one lock file's text in bounded steps (a generator that yields
    between steps of ``LOAD_STEP`` Locks or one document, and returns the Locks).

    YAML (``json=False``: one or many documents, parsed one at a time) or JSON (one
    document). Raises LockValidationError as ``load_locks_from_text`` does, and also when
    the file defines no Lock at all unless it says so: a line ``# no locks`` (YAML), or an
    empty ``LockList``/``List`` (``items: []``). An empty or half-written file is refused
    (the proxy keeps its last good set) rather than read as "unlock everything".
    """
    listed: list[bool] = []

    def noting_lists(inner: Iterator[object]) -> Iterator[object]:
        for doc in inner:
            yield doc
            # A streamed document's head is complete once its items were read.
            head = doc.head if isinstance(doc, StreamedMapping) else doc
            if isinstance(head, dict) and head.get("kind") in LIST_KINDS:
                listed.append(True)

    docs: Iterator[object]
    try:
        if json:
            docs = iter([load_json(text, "JSON")] if text.strip() else [])
        else:
            docs = iter_yaml_documents_streaming(text, "YAML")
        locks = yield from _objects_steps(
            noting_lists(docs),
            source,
            default_namespace,
            lambda e: _document_error(e, source),
        )
    except DecodeError as e:
        raise _document_error(e, source) from e
    if not locks and not listed and not _says_no_locks(text):
        raise LockValidationError(
            "the file defines no Lock (empty, or cut short while it was being written?); "
            f"to mean no locks, write a line '{NO_LOCKS_MARKER}' or an empty LockList",
            source=source,
        )
    return locks


def _says_no_locks(text: str) -> bool:
    return any(line.strip().lower() == NO_LOCKS_MARKER for line in text.splitlines())


def _document_error(e: DecodeError, source: str) -> LockValidationError:
    if isinstance(e, MalformedDocument):
        return LockValidationError(f"malformed {e.language}{e.where}: {e.problem}", source=source)
    return LockValidationError(f"malformed document: {e}", source=source)


def load_locks_from_text(
    text: str, *, source: str, default_namespace: str = "default"
) -> list[Lock]:
    """Load every Lock from YAML (or JSON) text; raises LockValidationError, never crashes."""
    try:
        # The project's one strict loader: duplicate and merge keys are refused in lock
        # files as in request bodies (which of two values counts would be a guess).
        docs = load_yaml_documents(text, "YAML")
    except DecodeError as e:
        raise _document_error(e, source) from e
    return load_locks_from_objects(docs, source=source, default_namespace=default_namespace)


def lock_from_object(
    obj: Mapping[str, object], *, source: str, default_namespace: str | None = None
) -> Lock:
    """Validate one Lock object as the API server returns it (for the cluster lock source).

    The namespace comes from ``metadata.namespace``; it is required unless
    ``default_namespace`` is given. A missing apiVersion/kind (list items, watch events of
    some clients) is taken as Lock's, since the caller asked the locks resource; a wrong
    one is still an error.
    """
    ctx = _Ctx(source, None, "")
    candidate = dict(obj)
    candidate.setdefault("apiVersion", API_VERSION)
    candidate.setdefault("kind", KIND)
    return _validate(candidate, ctx, default_namespace)


def _lock_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p for p in path.iterdir() if p.is_file() and p.name.endswith(LOCK_FILE_SUFFIXES)
        )
    return [path]


def claim_key(origin: dict[str, str], lock: Lock, source: str) -> None:
    """Record in ``origin`` (key -> source) that ``source`` defines ``lock``; a
    LockValidationError naming both sources when another one defined its key already."""
    if lock.key in origin:
        raise LockValidationError(
            f"duplicate lock {lock.key} (also defined in {origin[lock.key]})",
            source=source,
            lock=lock.key,
        )
    origin[lock.key] = source


def load_locks_from_path(path: str | Path, default_namespace: str = "default") -> list[Lock]:
    """Load Locks from a file, or from every ``*.yaml|*.yml|*.json`` file of a directory.

    Files of a directory are read in name order (not recursively). A lock defined twice
    (same namespace/name) is an error, within a file or across files.
    """
    root = Path(path)
    if not root.exists():
        raise LockValidationError("no such file or directory", source=str(root))
    locks: list[Lock] = []
    origin: dict[str, str] = {}
    for file in _lock_files(root):
        source = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LockValidationError(f"cannot read: {e}", source=source) from e
        found = _drive(
            lock_file_steps(
                text,
                source=source,
                default_namespace=default_namespace,
                json=file.suffix == ".json",
            )
        )
        for lock in found:
            claim_key(origin, lock, source)
            locks.append(lock)
    logger.debug("loaded %d locks from %s", len(locks), root)
    return locks
