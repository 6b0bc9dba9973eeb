"""The decision engine: may this caller do this operation to an object with these labels?

Semantics (``docs/semantics.md``, "How a request is decided"):

- a Lock applies only in its own namespace, and only to the operations it lists;
- Lock objects themselves (``locks.klock.rnemet.dev``) are never locked;
- CREATE is judged on the new labels, UPDATE on the old OR the new ones, DELETE on the old
  ones, CONNECT on the parent object's (old) labels;
- every applicable Lock is evaluated: a Lock whose ``exclusive`` matches the caller does not
  apply to that caller, but it never switches the other Locks off (Klock's first-exemption
  short cut is not reproduced);
- ``exclusive.name`` without ``:`` matches the username itself or the service account of
  that name in the Lock's own namespace; with ``:`` it must equal the whole username;
  ``exclusive.uid`` must equal the caller's uid; when both are set both must match;
- dry-run requests get the same decision (the user wants to know);
- an invalid Lock (``InvalidLock``: a Lock object the cluster holds that fails validation)
  refuses EVERY operation on every object of its namespace, for every caller (its
  ``exclusive`` cannot be trusted either), Lock objects excepted so that it can be fixed or
  deleted: ``denied, Lock shop/typo is invalid (spec.operations[0]: unknown operation
  'UPDTAE' (...)): fix or delete it``. A security tool fails closed on a Lock it cannot read;
  ``covers`` is true for every operation in that namespace.

Locks are indexed by (namespace, operation) and, inside that, by label key and value: a
lock with a key whose expression accepts finitely many values (``red``, ``red|blue``) is
found only through those values; a lock made only of negations (``^stable``) is ruled out by
the values its expressions reject. A decision costs what the locks that can possibly match
cost, not what the whole set costs.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field

from klockproxy.core.locks import GROUP, InvalidLock, Lock
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo

logger = logging.getLogger(__name__)

LOCK_RESOURCE = "locks"
DENIAL_PREFIX = "denied, there is a lock: "
INVALID_PREFIX = "denied, "
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_NO_LABELS: Mapping[str, str] = {}


def is_lock_resource(resource: ResourceRef) -> bool:
    """Lock objects are never locked (else a Lock matching its own labels is a deadlock)."""
    return resource.group == GROUP and resource.resource == LOCK_RESOURCE


def is_exempt(lock: Lock, user: UserInfo) -> bool:
    """Whether ``user`` is the one ``lock.exclusive`` lets through (False if nobody is)."""
    name, uid = lock.exclusive_name, lock.exclusive_uid
    if name is None and uid is None:
        return False
    if uid is not None and user.uid != uid:
        return False
    if name is None:
        return True
    if ":" in name:
        return user.username == name
    return (
        user.username == name
        or user.username == f"{_SERVICE_ACCOUNT_PREFIX}{lock.namespace}:{name}"
    )


def who_may(lock: Lock) -> str:
    """Human text for the exemption: ``only jonny-op may`` / ``nobody is exempt``."""
    name, uid = lock.exclusive_name, lock.exclusive_uid
    if name is not None and uid is not None:
        return f"only {name} with uid {uid} may"
    if name is not None:
        return f"only {name} may"
    if uid is not None:
        return f"only the user with uid {uid} may"
    return "nobody is exempt"


@dataclass(frozen=True, slots=True)
class Denial:
    """One Lock responsible for a denial.

    ``matched_old``/``matched_new`` say which labels the lock matched (UPDATE is judged on
    both). ``text`` is this lock's part of the message:
    ``map[aura:red] (Lock default/lockred forbids UPDATE of pods "my-pod"; only jonny-op may)``.
    For an ``InvalidLock`` neither flag is set (it refuses whatever the labels) and the text is
    ``Lock shop/typo is invalid (<field>: <fault>): fix or delete it``.
    """

    lock: Lock | InvalidLock
    operation: Operation
    matched_old: bool
    matched_new: bool
    text: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer.

    ``message`` is empty when allowed; when denied it starts with Klock's exact text
    (``denied, there is a lock: map[aura:red]``) and names every responsible lock, or, when
    the namespace holds an invalid Lock, with ``denied, Lock <ns>/<name> is invalid (...)``.
    ``exempted`` lists the locks that matched the object but let this caller through (the
    proxy guards such writes against a concurrent relabel).
    """

    allowed: bool
    denials: tuple[Denial, ...] = ()
    message: str = ""
    exempted: tuple[Lock, ...] = field(default=())


ALLOWED = Decision(allowed=True)


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The locks of one (namespace, operation), as positions into its namespace's locks."""

    # Locks nothing can rule out (empty matcher, or expressions true for every value).
    always: frozenset[int]
    # label key -> label value -> locks that can only match when labels[key] == value
    # (locks with at least one key whose expression accepts finitely many values).
    by_label: Mapping[str, Mapping[str, tuple[int, ...]]]
    # Locks whose keys are all negations ("^stable"): they match unless ruled out...
    negative: frozenset[int]
    # ...by label key -> label value -> the negative locks that value makes impossible.
    excluded_by: Mapping[str, Mapping[str, frozenset[int]]]


class _BucketBuilder:
    def __init__(self) -> None:
        self.always: set[int] = set()
        self.by_label: dict[str, dict[str, list[int]]] = {}
        self.negative: set[int] = set()
        self.excluded_by: dict[str, dict[str, set[int]]] = {}

    def add(self, pos: int, lock: Lock) -> None:
        # Index by the key with the smallest finite accepted set: the lock can only match
        # objects carrying one of those values there.
        best: tuple[str, frozenset[str]] | None = None
        for key, expr in lock.matcher:
            accepted = expr.accepted
            if accepted is not None and (best is None or len(accepted) < len(best[1])):
                best = (key, accepted)
        if best is not None:
            key, values = best
            per_value = self.by_label.setdefault(key, {})
            for value in values:
                per_value.setdefault(value, []).append(pos)
            return
        # Only negations: any key whose label value is in its rejected set rules it out.
        rejecting = [(key, expr.values) for key, expr in lock.matcher if expr.values]
        if not rejecting:
            self.always.add(pos)
            return
        self.negative.add(pos)
        for key, values in rejecting:
            per_value_excluded = self.excluded_by.setdefault(key, {})
            for value in values:
                per_value_excluded.setdefault(value, set()).add(pos)

    def build(self) -> _Bucket:
        return _Bucket(
            always=frozenset(self.always),
            by_label={
                key: {value: tuple(positions) for value, positions in per_value.items()}
                for key, per_value in self.by_label.items()
            },
            negative=frozenset(self.negative),
            excluded_by={
                key: {value: frozenset(positions) for value, positions in per_value.items()}
                for key, per_value in self.excluded_by.items()
            },
        )


def invalid_text(lock: InvalidLock) -> str:
    """An invalid Lock's part of a denial: ``Lock shop/typo is invalid (...): fix or delete it``."""
    return f"Lock {lock.key} is invalid ({lock.reason}): fix or delete it"


def _describe(inp: AdmissionInput) -> str:
    resource = inp.resource.group_resource if inp.resource.resource else (inp.kind or "objects")
    target = f'{resource} "{inp.name}"' if inp.name else resource
    if inp.resource.subresource:
        target += f" through {inp.resource.subresource}"
    return target


@dataclass(frozen=True, slots=True)
class _Namespace:
    """The locks of one namespace, sorted by name, with their buckets and denial texts."""

    locks: tuple[Lock, ...]
    # Each lock's fixed parts of its denial text, built once rather than per denial.
    texts: tuple[tuple[str, str], ...]
    buckets: Mapping[Operation, _Bucket]


# How many locks a build step handles before it yields (see ``Engine.build``).
BUILD_STEP = 64


def _namespace_steps(locks: list[Lock]) -> Generator[None, None, _Namespace]:
    """Build one namespace, yielding every ``BUILD_STEP`` locks."""
    ordered = tuple(sorted(locks, key=lambda lk: lk.name))
    texts: list[tuple[str, str]] = []
    builders: dict[Operation, _BucketBuilder] = {}
    for pos, lock in enumerate(ordered):
        texts.append((f"{lock.matcher_text()} (Lock {lock.key} forbids ", f"; {who_may(lock)})"))
        for op in lock.operations:
            builder = builders.get(op)
            if builder is None:
                builder = builders[op] = _BucketBuilder()
            builder.add(pos, lock)
        if pos % BUILD_STEP == BUILD_STEP - 1:
            yield
    buckets = {op: builder.build() for op, builder in builders.items()}
    return _Namespace(ordered, tuple(texts), buckets)


class Engine:
    """An immutable, indexed set of Locks answering admission questions.

    ``invalid`` are the Lock objects that failed validation: each refuses every mutation in
    its namespace (see the module docstring). Build a new Engine when the locks change (lock
    sources do), in one go (``Engine(locks)``) or step by step from the previous one, where
    only the namespaces whose locks changed are rebuilt (``Engine.build``); ``decide`` is safe
    to call from any thread.
    """

    __slots__ = ("_all", "_invalid", "_namespaces", "_refusals")
    _namespaces: dict[str, _Namespace]
    _invalid: tuple[InvalidLock, ...]
    _refusals: dict[tuple[str, Operation], Decision]
    # Every lock sorted by namespace then name, made on first use of ``locks``.
    _all: tuple[Lock, ...] | None

    def __init__(self, locks: Iterable[Lock] = (), invalid: Iterable[InvalidLock] = ()) -> None:
        by_namespace: dict[str, list[Lock]] = {}
        for lock in locks:
            by_namespace.setdefault(lock.namespace, []).append(lock)
        steps = self._steps(None, by_namespace, invalid)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                self._adopt(done.value)
                return

    def _adopt(self, other: Engine) -> None:
        self._namespaces = other._namespaces
        self._invalid = other._invalid
        self._refusals = other._refusals
        self._all = other._all

    @classmethod
    def build(
        cls,
        base: Engine | None,
        changed: Mapping[str, Iterable[Lock]],
        invalid: Iterable[InvalidLock] = (),
    ) -> Generator[None, None, Engine]:
        """Build an engine step by step: a generator that yields between bounded steps of
        work (``BUILD_STEP`` locks) and returns the engine.

        ``changed`` maps each namespace whose locks changed to ALL its locks now (none: the
        namespace has no locks any more); the other namespaces are taken from ``base`` as
        they are (every namespace when ``base`` is None means ``changed`` is everything).
        ``invalid`` is always the whole set. The caller drives the generator and may let
        other work run between steps (the proxy's event loop does); the result is the same
        as ``Engine(all locks, invalid)``.
        """
        return cls._steps(base, {ns: list(locks) for ns, locks in changed.items()}, invalid)

    @classmethod
    def _steps(
        cls,
        base: Engine | None,
        changed: dict[str, list[Lock]],
        invalid: Iterable[InvalidLock],
    ) -> Generator[None, None, Engine]:
        namespaces: dict[str, _Namespace] = dict(base._namespaces) if base is not None else {}
        for namespace in sorted(changed):
            locks = changed[namespace]
            if not locks:
                namespaces.pop(namespace, None)
                continue
            namespaces[namespace] = yield from _namespace_steps(locks)
            yield
        engine = cls.__new__(cls)
        engine._namespaces = namespaces
        engine._all = None
        engine._invalid = tuple(
            sorted(set(invalid), key=lambda lk: (lk.namespace, lk.name, lk.reason))
        )
        # The whole answer for every operation in a namespace holding an invalid Lock.
        per_namespace: dict[str, list[InvalidLock]] = {}
        for bad in engine._invalid:
            per_namespace.setdefault(bad.namespace, []).append(bad)
        engine._refusals = {}
        for namespace, bad_locks in per_namespace.items():
            texts = [invalid_text(bad) for bad in bad_locks]
            message = INVALID_PREFIX + "; ".join(texts)
            for op in Operation:
                denials = tuple(
                    Denial(bad, op, False, False, text)
                    for bad, text in zip(bad_locks, texts, strict=True)
                )
                engine._refusals[(namespace, op)] = Decision(False, denials, message)
        return engine

    @property
    def lock_count(self) -> int:
        """How many locks this engine holds."""
        return sum(len(ns.locks) for ns in self._namespaces.values())

    @property
    def locks(self) -> tuple[Lock, ...]:
        """The (valid) locks, sorted by namespace then name."""
        if self._all is None:
            self._all = tuple(
                lock for name in sorted(self._namespaces) for lock in self._namespaces[name].locks
            )
        return self._all

    def namespace_locks(self, namespace: str) -> tuple[Lock, ...]:
        """The (valid) locks of one namespace, sorted by name."""
        ns = self._namespaces.get(namespace)
        return ns.locks if ns is not None else ()

    @property
    def invalid(self) -> tuple[InvalidLock, ...]:
        """The invalid Locks, sorted by namespace then name; each refuses its namespace."""
        return self._invalid

    def covers(self, namespace: str, operation: Operation) -> bool:
        """Is there any lock in ``namespace`` for ``operation``? (If not, skip all work.)

        True for every operation of a namespace that holds an invalid Lock.
        """
        ns = self._namespaces.get(namespace)
        if ns is not None and operation in ns.buckets:
            return True
        return (namespace, operation) in self._refusals

    def decide(self, inp: AdmissionInput) -> Decision:
        """Judge one operation on one object; see the module docstring for the rules."""
        if is_lock_resource(inp.resource):
            return ALLOWED
        if self._refusals:
            refusal = self._refusals.get((inp.namespace, inp.operation))
            if refusal is not None:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "denied %s %s/%s: the namespace holds an invalid Lock",
                        inp.operation.value,
                        inp.namespace,
                        inp.name,
                    )
                return refusal
        ns = self._namespaces.get(inp.namespace)
        if ns is None:
            return ALLOWED
        bucket = ns.buckets.get(inp.operation)
        if bucket is None:
            return ALLOWED

        op = inp.operation
        old: Mapping[str, str] | None
        new: Mapping[str, str] | None
        if op is Operation.CREATE:
            old, new = None, inp.new_labels if inp.new_labels is not None else _NO_LABELS
        elif op is Operation.UPDATE:
            old, new = inp.old_labels, inp.new_labels
            if old is None and new is None:
                old = _NO_LABELS
        else:  # DELETE, CONNECT: the existing (parent) object decides
            old, new = (inp.old_labels if inp.old_labels is not None else _NO_LABELS), None

        candidates = self._candidates(bucket, old, new)
        if not candidates:
            return ALLOWED

        denials: list[Denial] = []
        exempted: list[Lock] = []
        target = ""
        locks, texts = ns.locks, ns.texts
        for pos in candidates:
            lock = locks[pos]
            matched_old = old is not None and lock.matches(old)
            matched_new = new is not None and lock.matches(new)
            if not (matched_old or matched_new):
                continue
            if is_exempt(lock, inp.user):
                exempted.append(lock)
                continue
            if not target:
                target = f"{op.value} of {_describe(inp)}"
            head, tail = texts[pos]
            text = head + target + tail
            denials.append(Denial(lock, op, matched_old, matched_new, text))
        if not denials:
            return Decision(allowed=True, exempted=tuple(exempted)) if exempted else ALLOWED
        message = DENIAL_PREFIX + ", and a lock: ".join(d.text for d in denials)
        if logger.isEnabledFor(logging.DEBUG):
            keys = ", ".join(d.lock.key for d in denials)
            logger.debug("denied %s %s/%s by %s", op.value, inp.namespace, inp.name, keys)
        return Decision(
            allowed=False, denials=tuple(denials), message=message, exempted=tuple(exempted)
        )

    @staticmethod
    def _candidates(
        bucket: _Bucket, old: Mapping[str, str] | None, new: Mapping[str, str] | None
    ) -> list[int]:
        """Positions of the locks that may match ``old`` or ``new``, in lock order."""
        found: set[int] = set(bucket.always)
        by_label = bucket.by_label
        negative = bucket.negative
        excluded_by = bucket.excluded_by
        for labels in (old, new):
            if labels is None:
                continue
            excluded: set[int] = set()
            for key, value in labels.items():
                per_value = by_label.get(key)
                if per_value is not None:
                    hit = per_value.get(value)
                    if hit is not None:
                        found.update(hit)
                if negative:
                    per_value_excluded = excluded_by.get(key)
                    if per_value_excluded is not None:
                        ruled_out = per_value_excluded.get(value)
                        if ruled_out is not None:
                            excluded |= ruled_out
            if negative:
                found |= negative - excluded if excluded else negative
        return sorted(found)
