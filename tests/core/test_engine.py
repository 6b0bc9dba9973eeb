"""The decision engine: Klock's 13 end-to-end cases, the seed scenario, and every fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.core.engine import (
    DENIAL_PREFIX,
    Decision,
    Engine,
    is_exempt,
    is_lock_resource,
)
from klockproxy.core.errors import LockValidationError
from klockproxy.core.locks import InvalidLock, Lock, load_locks_from_objects, lock_from_object
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo

PODS = ResourceRef("", "v1", "pods")
CONFIGMAPS = ResourceRef("", "v1", "configmaps")
LOCKS = ResourceRef("klock.rnemet.dev", "v1", "locks")
ADMIN = UserInfo("kubernetes-admin", groups=("system:masters",))
JONNY = UserInfo("system:serviceaccount:default:jonny-op", uid="sa-uid-1")


def make_lock(
    name: str,
    operations: list[str],
    matcher: Mapping[str, str] | None = None,
    *,
    namespace: str = "default",
    exclusive: Mapping[str, str] | None = None,
) -> Lock:
    spec: dict[str, Any] = {"operations": operations}
    if matcher is not None:
        spec["matcher"] = dict(matcher)
    if exclusive is not None:
        spec["exclusive"] = dict(exclusive)
    doc = {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    (lock,) = load_locks_from_objects([doc], source="test")
    return lock


def ask(
    engine: Engine,
    operation: Operation,
    name: str,
    *,
    old: Mapping[str, str] | None = None,
    new: Mapping[str, str] | None = None,
    user: UserInfo = ADMIN,
    namespace: str = "default",
    resource: ResourceRef = PODS,
    dry_run: bool = False,
) -> Decision:
    return engine.decide(
        AdmissionInput(
            operation=operation,
            namespace=namespace,
            resource=resource,
            name=name,
            user=user,
            old_labels=old,
            new_labels=new,
            dry_run=dry_run,
        )
    )


def delete(engine: Engine, labels: Mapping[str, str], **kw: Any) -> Decision:
    return ask(engine, Operation.DELETE, "p", old=labels, **kw)


def relabel(engine: Engine, old: Mapping[str, str], new: Mapping[str, str], **kw: Any) -> Decision:
    return ask(engine, Operation.UPDATE, "p", old=old, new=new, **kw)


# --- Klock's 13 end-to-end (kuttl) cases as decisions ------------------------------------


def test_klock_e2e_01_no_lock() -> None:
    engine = Engine([])
    assert relabel(engine, {}, {"a": "b"}).allowed
    assert delete(engine, {"a": "b"}).allowed


def test_klock_e2e_02_lock_does_not_match_unlabelled_pod() -> None:
    engine = Engine([make_lock("l", ["UPDATE", "DELETE"], {"test": "test"})])
    assert relabel(engine, {}, {"other": "x"}).allowed
    assert delete(engine, {"other": "x"}).allowed


def test_klock_e2e_03_delete_denied_then_allowed_after_lock_removed() -> None:
    lock = make_lock("l", ["DELETE"], {"testtodelete": "test"})
    assert not delete(Engine([lock]), {"testtodelete": "test"}).allowed
    assert delete(Engine([]), {"testtodelete": "test"}).allowed


def test_klock_e2e_04_two_pods_neither_matches() -> None:
    engine = Engine([make_lock("l", ["DELETE"], {"testtodelete": "test"})])
    assert delete(engine, {"app": "one"}).allowed
    assert delete(engine, {"testtodelete": "other"}).allowed


def test_klock_e2e_05_two_pods_one_matches() -> None:
    engine = Engine([make_lock("l", ["DELETE"], {"testtodelete": "test"})])
    assert delete(engine, {"testtodelete": "nope"}).allowed
    assert not delete(engine, {"testtodelete": "test"}).allowed


def test_klock_e2e_06_negated_alternatives() -> None:
    lock = make_lock("l", ["DELETE"], {"aura": "^(red|blue)"})
    engine = Engine([lock])
    assert delete(engine, {"aura": "red"}).allowed
    denied = delete(engine, {"aura": "green"})
    assert not denied.allowed
    assert denied.message.startswith("denied, there is a lock: map[aura:^(red|blue)]")
    assert delete(Engine([]), {"aura": "green"}).allowed


def test_klock_e2e_07_two_keys_all_must_match() -> None:
    engine = Engine([make_lock("l", ["DELETE"], {"aura": "red", "element": "^wind"})])
    assert delete(engine, {"aura": "red", "element": "wind"}).allowed
    denied = delete(engine, {"aura": "red", "element": "fire"})
    assert not denied.allowed
    assert denied.message.startswith("denied, there is a lock: map[aura:red element:^wind]")


def two_locks() -> Engine:
    return Engine(
        [
            make_lock("lock-a", ["DELETE"], {"slayer": "dragon"}),
            make_lock("lock-b", ["DELETE"], {"dragon": "black"}),
        ]
    )


def test_klock_e2e_08_two_locks_three_pods_none_match() -> None:
    engine = two_locks()
    for labels in ({}, {"slayer": "knight"}, {"dragon": "white"}):
        assert delete(engine, labels).allowed


def test_klock_e2e_09_two_locks_one_pod_matches() -> None:
    engine = two_locks()
    denied = delete(engine, {"slayer": "dragon"})
    assert not denied.allowed
    assert [d.lock.name for d in denied.denials] == ["lock-a"]
    assert delete(engine, {"slayer": "knight"}).allowed
    assert delete(engine, {}).allowed


def test_klock_e2e_10_locksmith_and_knight() -> None:
    engine = Engine(
        [
            make_lock("locksmith", ["DELETE"], {"dragon": "black"}),
            make_lock("knight", ["UPDATE"], {"slayer": "dragon"}),
        ]
    )
    start = {"slayer": "knight"}
    after = {"slayer": "knight", "dragon": "black"}
    assert relabel(engine, start, after).allowed
    denied = delete(engine, after)
    assert not denied.allowed
    assert [d.lock.name for d in denied.denials] == ["locksmith"]


def test_klock_e2e_11_locks_matching_each_other_can_be_deleted() -> None:
    engine = Engine(
        [
            make_lock("one", ["DELETE"], {"lock": "two"}),
            make_lock("two", ["DELETE"], {"lock": "one"}),
        ]
    )
    assert ask(engine, Operation.DELETE, "one", old={"lock": "one"}, resource=LOCKS).allowed
    assert ask(engine, Operation.DELETE, "two", old={"lock": "two"}, resource=LOCKS).allowed


def test_klock_e2e_12_lock_matching_its_own_labels_can_be_deleted() -> None:
    engine = Engine([make_lock("self", ["UPDATE", "DELETE"], {"aura": "red"})])
    assert ask(engine, Operation.DELETE, "self", old={"aura": "red"}, resource=LOCKS).allowed
    assert ask(
        engine, Operation.UPDATE, "self", old={"aura": "red"}, new={}, resource=LOCKS
    ).allowed


def test_klock_e2e_13_exclusive_service_account() -> None:
    other_sa = UserInfo("system:serviceaccount:default:someone")
    johny = UserInfo("system:serviceaccount:default:johny")
    before = Engine([make_lock("l", ["DELETE"], {"aura": "red"})])
    assert not delete(before, {"aura": "red"}, user=other_sa).allowed
    assert not delete(before, {"aura": "red"}, user=johny).allowed
    after = Engine([make_lock("l", ["DELETE"], {"aura": "red"}, exclusive={"name": "johny"})])
    assert not delete(after, {"aura": "red"}, user=other_sa).allowed
    assert delete(after, {"aura": "red"}, user=johny).allowed


# --- the founding scenario's decision table ---------------------------------------------

LOCKRED = make_lock(
    "lockred", ["UPDATE", "DELETE"], {"aura": "red"}, exclusive={"name": "jonny-op"}
)
SEED = Engine([LOCKRED])
MY_POD = {"aura": "red", "run": "my-pod"}
MY_CM = {"aura": "red"}
OTHER_POD = {"run": "other-pod"}


def test_seed_admin_label_my_pod_denied_with_klock_text() -> None:
    d = relabel(SEED, MY_POD, {**MY_POD, "here": "was-admin"})
    assert not d.allowed
    assert d.message == (
        'denied, there is a lock: map[aura:red] (Lock default/lockred forbids UPDATE of pods "p"; '
        "only jonny-op may)"
    )
    (denial,) = d.denials
    assert denial.lock is LOCKRED and denial.matched_old and denial.matched_new


def test_seed_admin_label_and_delete_my_cm_denied() -> None:
    d = ask(
        SEED, Operation.UPDATE, "my-cm", old=MY_CM, new={**MY_CM, "x": "y"}, resource=CONFIGMAPS
    )
    assert not d.allowed
    assert 'forbids UPDATE of configmaps "my-cm"' in d.message
    d = ask(SEED, Operation.DELETE, "my-cm", old=MY_CM, resource=CONFIGMAPS)
    assert not d.allowed
    assert d.message.startswith("denied, there is a lock: map[aura:red] (Lock default/lockred ")
    assert 'forbids DELETE of configmaps "my-cm"' in d.message


def test_seed_admin_relabel_other_pod_allowed() -> None:
    assert relabel(SEED, OTHER_POD, {**OTHER_POD, "aura": "blue"}).allowed


def test_seed_jonny_may_update_and_delete() -> None:
    d = relabel(SEED, MY_POD, {**MY_POD, "here": "was-jonny"}, user=JONNY)
    assert d.allowed and d.message == ""
    assert d.exempted == (LOCKRED,)
    cm_update = ask(
        SEED, Operation.UPDATE, "my-cm", old=MY_CM, new={}, user=JONNY, resource=CONFIGMAPS
    )
    assert cm_update.allowed
    cm_delete = ask(SEED, Operation.DELETE, "my-cm", old=MY_CM, user=JONNY, resource=CONFIGMAPS)
    assert cm_delete.allowed


def test_seed_after_lock_deleted_admin_allowed() -> None:
    assert relabel(Engine([]), MY_POD, {**MY_POD, "here": "was-admin"}).allowed


def test_seed_create_is_not_in_lockred() -> None:
    assert ask(SEED, Operation.CREATE, "new", new={"aura": "red"}).allowed


# --- deliberate differences from Klock --------------------------------------------------


def test_fix_create_judged_on_new_labels() -> None:
    # Klock never blocks CREATE (there is no old object); klockproxy does.
    engine = Engine([make_lock("nocreate", ["CREATE"], {"aura": "red"})])
    d = ask(engine, Operation.CREATE, "p", new={"aura": "red"})
    assert not d.allowed
    assert 'forbids CREATE of pods "p"; nobody is exempt' in d.message
    assert ask(engine, Operation.CREATE, "p", new={"aura": "blue"}).allowed
    unnamed = ask(engine, Operation.CREATE, "", new={"aura": "red"})
    assert "forbids CREATE of pods; nobody is exempt" in unnamed.message


def test_fix_update_judged_on_old_or_new() -> None:
    # Klock judges only old labels: adding the locked label was allowed. Not here.
    d = relabel(SEED, OTHER_POD, {**OTHER_POD, "aura": "red"})
    assert not d.allowed
    (denial,) = d.denials
    assert (denial.matched_old, denial.matched_new) == (False, True)
    # Removing it is denied too (old labels match), as in Klock.
    d = relabel(SEED, MY_POD, {"run": "my-pod"})
    assert not d.allowed
    assert (d.denials[0].matched_old, d.denials[0].matched_new) == (True, False)


def test_fix_update_without_old_object_uses_new_labels() -> None:
    # A PUT that creates: only the new labels are known.
    assert not ask(SEED, Operation.UPDATE, "p", new={"aura": "red"}).allowed


def test_fix_connect_judged_on_parent_labels() -> None:
    engine = Engine([make_lock("noexec", ["CONNECT"], {"aura": "red"})])
    exec_ref = ResourceRef("", "v1", "pods", "exec")
    d = ask(engine, Operation.CONNECT, "my-pod", old=MY_POD, resource=exec_ref)
    assert not d.allowed
    assert 'forbids CONNECT of pods "my-pod" through exec' in d.message
    assert ask(engine, Operation.CONNECT, "other-pod", old=OTHER_POD, resource=exec_ref).allowed


def test_fix_subresources_use_parent_labels() -> None:
    eviction = ResourceRef("", "v1", "pods", "eviction")
    d = ask(SEED, Operation.DELETE, "my-pod", old=MY_POD, resource=eviction)
    assert not d.allowed
    assert 'forbids DELETE of pods "my-pod" through eviction' in d.message
    scale = ResourceRef("apps", "v1", "deployments", "scale")
    d = ask(SEED, Operation.UPDATE, "web", old=MY_CM, new=MY_CM, resource=scale)
    assert not d.allowed
    assert 'forbids UPDATE of deployments.apps "web" through scale' in d.message


def test_fix_exempting_lock_does_not_switch_off_another() -> None:
    # Klock returns "allowed" at the first lock whose exclusive matches: order-dependent.
    engine = Engine(
        [
            make_lock("a-jonny", ["DELETE"], {"aura": "red"}, exclusive={"name": "jonny-op"}),
            make_lock("b-freeze", ["DELETE"], {}),
        ]
    )
    d = delete(engine, MY_POD, user=JONNY)
    assert not d.allowed
    assert [x.lock.name for x in d.denials] == ["b-freeze"]
    assert [lk.name for lk in d.exempted] == ["a-jonny"]
    assert d.message == (
        'denied, there is a lock: map[] (Lock default/b-freeze forbids DELETE of pods "p"; '
        "nobody is exempt)"
    )


def test_every_responsible_lock_is_named() -> None:
    engine = Engine(
        [
            make_lock("freeze", ["DELETE"]),
            make_lock("lockred", ["DELETE"], {"aura": "red"}, exclusive={"name": "jonny-op"}),
        ]
    )
    d = delete(engine, MY_POD)
    assert [x.lock.name for x in d.denials] == ["freeze", "lockred"]
    assert d.message == (
        'denied, there is a lock: map[] (Lock default/freeze forbids DELETE of pods "p"; '
        "nobody is exempt), and a lock: map[aura:red] (Lock default/lockred forbids DELETE of "
        'pods "p"; only jonny-op may)'
    )


def test_fix_same_named_service_account_elsewhere_is_not_exempt() -> None:
    elsewhere = UserInfo("system:serviceaccount:other:jonny-op")
    assert not delete(SEED, MY_POD, user=elsewhere).allowed
    # Klock compares the last ':' segment, so this user would have passed there.
    assert not delete(SEED, MY_POD, user=UserInfo("oidc:jonny-op")).allowed
    # A user literally named jonny-op is the name itself.
    assert delete(SEED, MY_POD, user=UserInfo("jonny-op")).allowed


@pytest.mark.parametrize(
    ("exclusive", "user", "exempt"),
    [
        ({"name": "jonny-op"}, UserInfo("jonny-op"), True),
        ({"name": "jonny-op"}, UserInfo("system:serviceaccount:default:jonny-op"), True),
        ({"name": "jonny-op"}, UserInfo("system:serviceaccount:kube-system:jonny-op"), False),
        ({"name": "jonny-op"}, UserInfo("jonny-op2"), False),
        (
            {"name": "system:serviceaccount:ops:bot"},
            UserInfo("system:serviceaccount:ops:bot"),
            True,
        ),
        ({"name": "system:serviceaccount:ops:bot"}, UserInfo("bot"), False),
        ({"name": "oidc:alice"}, UserInfo("oidc:alice"), True),
        ({"uid": "u-1"}, UserInfo("anyone", uid="u-1"), True),
        ({"uid": "u-1"}, UserInfo("anyone", uid="u-2"), False),
        ({"uid": "u-1"}, UserInfo("anyone"), False),
        ({"name": "jonny-op", "uid": "u-1"}, UserInfo("jonny-op", uid="u-1"), True),
        ({"name": "jonny-op", "uid": "u-1"}, UserInfo("jonny-op", uid="u-2"), False),
        ({"name": "jonny-op", "uid": "u-1"}, UserInfo("alice", uid="u-1"), False),
        # Groups are ignored, as in Klock.
        ({"name": "admins"}, UserInfo("alice", groups=("admins",)), False),
    ],
)
def test_exclusive_rules(exclusive: dict[str, str], user: UserInfo, exempt: bool) -> None:
    lock = make_lock("l", ["DELETE"], {"aura": "red"}, exclusive=exclusive)
    assert is_exempt(lock, user) is exempt
    assert delete(Engine([lock]), MY_POD, user=user).allowed is exempt


def test_who_may_texts() -> None:
    uid_only = make_lock("l", ["DELETE"], {"aura": "red"}, exclusive={"uid": "u-1"})
    assert "; only the user with uid u-1 may)" in delete(Engine([uid_only]), MY_POD).message
    both = make_lock("l", ["DELETE"], {"aura": "red"}, exclusive={"name": "bob", "uid": "u-1"})
    assert "; only bob with uid u-1 may)" in delete(Engine([both]), MY_POD).message


def test_locks_apply_only_in_their_namespace() -> None:
    engine = Engine([make_lock("l", ["DELETE"], {"aura": "red"}, namespace="prod")])
    assert delete(engine, MY_POD, namespace="default").allowed
    assert not delete(engine, MY_POD, namespace="prod").allowed
    assert delete(engine, MY_POD, namespace="").allowed  # cluster-scoped


def test_lock_objects_are_never_locked() -> None:
    engine = Engine([make_lock("freeze", ["CREATE", "UPDATE", "DELETE"])])
    assert not delete(engine, {}).allowed
    assert is_lock_resource(LOCKS)
    assert not is_lock_resource(ResourceRef("other.example", "v1", "locks"))
    assert ask(engine, Operation.CREATE, "x", new={}, resource=LOCKS).allowed
    assert delete(engine, {}, resource=LOCKS).allowed


def test_dry_run_gets_the_same_decision() -> None:
    wet = delete(SEED, MY_POD)
    dry = delete(SEED, MY_POD, dry_run=True)
    assert dry == wet and not dry.allowed


def test_empty_matcher_is_a_namespace_freeze() -> None:
    engine = Engine([make_lock("freeze", ["UPDATE"])])
    assert not relabel(engine, {}, {}).allowed
    assert delete(engine, {}).allowed  # DELETE not listed


def test_negated_matcher_matches_absent_label() -> None:
    engine = Engine([make_lock("l", ["DELETE"], {"keep": "^no"})])
    assert not delete(engine, {}).allowed
    assert delete(engine, {"keep": "no"}).allowed


def test_missing_labels_count_as_empty() -> None:
    engine = Engine([make_lock("freeze", ["CREATE", "DELETE", "CONNECT"])])
    assert not ask(engine, Operation.CREATE, "x").allowed
    assert not ask(engine, Operation.DELETE, "x").allowed
    assert not ask(engine, Operation.CONNECT, "x").allowed


def test_operation_not_listed_is_allowed() -> None:
    assert ask(SEED, Operation.CREATE, "p", new=MY_POD).allowed
    assert ask(SEED, Operation.CONNECT, "p", old=MY_POD).allowed


def test_covers_and_lock_count() -> None:
    engine = Engine(
        [
            LOCKRED,
            make_lock("x", ["connect"], {"a": "^b"}, namespace="prod"),
        ]
    )
    assert engine.lock_count == 2
    assert engine.covers("default", Operation.UPDATE)
    assert engine.covers("default", Operation.DELETE)
    assert not engine.covers("default", Operation.CREATE)
    assert engine.covers("prod", Operation.CONNECT)
    assert not engine.covers("prod", Operation.DELETE)
    assert not engine.covers("staging", Operation.UPDATE)
    assert [lk.key for lk in engine.locks] == ["default/lockred", "prod/x"]


def test_decisions_do_not_depend_on_lock_order() -> None:
    locks = [
        make_lock("zz", ["DELETE"], {"aura": "red|blue"}),
        make_lock("aa", ["DELETE"], {"aura": "^green"}),
        make_lock("mm", ["DELETE"], {"aura": "red", "run": "my-pod"}),
    ]
    forward = delete(Engine(locks), MY_POD)
    backward = delete(Engine(reversed(locks)), MY_POD)
    assert forward == backward
    assert [d.lock.name for d in forward.denials] == ["aa", "mm", "zz"]
    assert forward.message.count(DENIAL_PREFIX) == 1
    assert forward.message.count(", and a lock: ") == 2


def test_index_matches_brute_force_on_many_locks() -> None:
    # Indexed candidates must never miss a lock that a full scan would find.
    exprs = ["red", "red|blue", "^red", "(red|blue)&^blue", "green&red", "^^blue", "blue|^x"]
    locks = [
        make_lock(f"l{i}-{j}", ["UPDATE"], {"aura": e, **({"tier": "web"} if j % 2 else {})})
        for i, e in enumerate(exprs)
        for j in range(2)
    ]
    engine = Engine(locks)
    samples: list[dict[str, str]] = [
        {},
        {"aura": "red"},
        {"aura": "blue"},
        {"aura": "green"},
        {"aura": "x"},
        {"aura": "red", "tier": "web"},
        {"aura": "blue", "tier": "web"},
        {"tier": "web"},
    ]
    for old in samples:
        for new in samples:
            d = relabel(engine, old, new)
            expected = sorted(lk.name for lk in locks if lk.matches(old) or lk.matches(new))
            assert sorted(x.lock.name for x in d.denials) == expected


EXPRESSIONS = ["red", "red|blue", "^red", "^(red|blue)", "(red|blue)&^blue", "red|^red", "^^blue"]
KEYS = ["aura", "tier"]
LABEL_MAPS = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["red", "blue", "green"]))
MATCHERS = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(EXPRESSIONS), max_size=2)


@settings(max_examples=200, deadline=None)
@given(st.lists(MATCHERS, min_size=1, max_size=8), LABEL_MAPS, LABEL_MAPS)
def test_indexed_decisions_equal_a_full_scan(
    matchers: list[dict[str, str]], old: dict[str, str], new: dict[str, str]
) -> None:
    locks = [make_lock(f"l{i}", ["UPDATE", "DELETE"], m) for i, m in enumerate(matchers)]
    engine = Engine(locks)
    for op, o, n in ((Operation.UPDATE, old, new), (Operation.DELETE, old, None)):
        d = ask(engine, op, "p", old=o, new=n)
        expected = sorted(
            lk.name for lk in locks if lk.matches(o) or (n is not None and lk.matches(n))
        )
        assert sorted(x.lock.name for x in d.denials) == expected
        assert d.allowed is (not expected)


# ---------------------------------------------------------------------------------------------
# Invalid Locks (held by the cluster, rejected by the validator) refuse their whole namespace.


def invalid_lock(name: str, spec: dict[str, Any], namespace: str = "shop") -> InvalidLock:
    """The InvalidLock the cluster lock source makes of a Lock object that fails validation."""
    obj = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    with pytest.raises(LockValidationError) as caught:
        lock_from_object(obj, source="cluster")
    return InvalidLock.from_error(namespace, name, caught.value)


TYPO = invalid_lock("typo", {"operations": ["UPDTAE", "DELETE"], "matcher": {"aura": "red"}})
TYPO_MESSAGE = (
    "denied, Lock shop/typo is invalid (spec.operations[0]: unknown operation 'UPDTAE' "
    "(expected one of CREATE, UPDATE, DELETE, CONNECT)): fix or delete it"
)


def test_an_invalid_lock_names_its_field_and_fault() -> None:
    made = InvalidLock.from_error("shop", "typo", LockValidationError("bad", field="spec.x"))
    assert made == InvalidLock("shop", "typo", "spec.x: bad")
    assert (TYPO.namespace, TYPO.name, TYPO.reason) == (
        "shop",
        "typo",
        "spec.operations[0]: unknown operation 'UPDTAE' "
        "(expected one of CREATE, UPDATE, DELETE, CONNECT)",
    )
    assert TYPO.key == "shop/typo" and not TYPO.has_exclusive
    empty = invalid_lock("empty", {"operations": ["DELETE"], "matcher": {"aura": ""}})
    assert empty.reason.startswith("spec.matcher.aura: ")
    dangling = invalid_lock("dangling", {"operations": ["DELETE"], "matcher": {"aura": "red|"}})
    assert dangling.reason.startswith("spec.matcher.aura: ")


@pytest.mark.parametrize("op", list(Operation))
def test_an_invalid_lock_refuses_every_operation_in_its_namespace(op: Operation) -> None:
    engine = Engine([], invalid=[TYPO])
    assert engine.covers("shop", op)
    assert not engine.covers("default", op)
    # Whatever the labels (the typo'd Lock matched aura=red only), whoever the caller.
    for labels in ({"aura": "red"}, {"aura": "blue"}, {}):
        for user in (ADMIN, JONNY):
            d = ask(engine, op, "p", old=labels, new=labels, user=user, namespace="shop")
            assert not d.allowed
            assert d.message == TYPO_MESSAGE
            assert [(x.lock, x.operation) for x in d.denials] == [(TYPO, op)]
            assert not d.exempted
    assert ask(engine, op, "p", old={"aura": "red"}, new={}, namespace="default").allowed


def test_an_invalid_lock_never_locks_lock_objects() -> None:
    """The Lock can still be fixed or deleted (and other Locks created) in its namespace."""
    engine = Engine([], invalid=[TYPO])
    for op in (Operation.CREATE, Operation.UPDATE, Operation.DELETE):
        assert ask(engine, op, "typo", old={}, new={}, namespace="shop", resource=LOCKS).allowed


def test_an_invalid_lock_exempts_nobody_and_outranks_valid_locks() -> None:
    """A valid Lock's exclusive user is refused too: the namespace is not trustworthy."""
    freeze = make_lock("freeze", ["DELETE"], namespace="shop", exclusive={"name": "jonny-op"})
    elsewhere = make_lock("lockred", ["DELETE"], {"aura": "red"})
    exclusive_typo = invalid_lock(
        "typo2", {"operations": ["DELETE", "UPDTAE"], "exclusive": {"name": "jonny-op"}}
    )
    engine = Engine([freeze, elsewhere], invalid=[exclusive_typo, TYPO])
    assert engine.locks == (elsewhere, freeze) and engine.invalid == (TYPO, exclusive_typo)
    jonny = UserInfo("system:serviceaccount:shop:jonny-op")
    d = delete(engine, {}, user=jonny, namespace="shop")
    assert not d.allowed
    assert [x.lock for x in d.denials] == [TYPO, exclusive_typo]
    assert d.message == (
        TYPO_MESSAGE + "; Lock shop/typo2 is invalid (spec.operations[1]: unknown operation "
        "'UPDTAE' (expected one of CREATE, UPDATE, DELETE, CONNECT)): fix or delete it"
    )
    assert not any(x.lock.has_exclusive for x in d.denials)
    # The valid Locks keep working elsewhere.
    assert not delete(engine, {"aura": "red"}).allowed
    assert delete(engine, {"aura": "blue"}).allowed
    # Fixed (no invalid Lock left): the ordinary rules again.
    fixed = Engine([freeze, elsewhere])
    assert delete(fixed, {}, user=jonny, namespace="shop").allowed
    assert not fixed.covers("shop", Operation.CREATE)


# ---------------------------------------------------------------------------------------------
# Step-by-step, incremental builds: only the namespaces that changed are rebuilt.

_NAMESPACES = ["a", "b", "c"]
_EXPRESSIONS = ["red", "red|blue", "^red", "^red|blue", ".*"]


def _drive(steps: Any) -> tuple[Engine, int]:
    """Run an Engine.build generator to the end; the engine and how many steps it yielded."""
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, count
        count += 1


_lock_spec = st.tuples(
    st.sampled_from(_NAMESPACES),
    st.integers(0, 5),
    st.sets(st.sampled_from(["CREATE", "UPDATE", "DELETE"]), min_size=1),
    st.sampled_from(_EXPRESSIONS),
)


def _locks(specs: list[tuple[str, int, set[str], str]]) -> dict[str, Lock]:
    out: dict[str, Lock] = {}
    for namespace, n, ops, expr in specs:
        lock = make_lock(f"l{n}", sorted(ops), {"aura": expr}, namespace=namespace)
        out[lock.key] = lock
    return out


@settings(max_examples=60, deadline=None)
@given(before=st.lists(_lock_spec, max_size=8), after=st.lists(_lock_spec, max_size=8))
def test_an_incremental_build_decides_as_a_full_build(
    before: list[tuple[str, int, set[str], str]], after: list[tuple[str, int, set[str], str]]
) -> None:
    old_locks, new_locks = _locks(before), _locks(after)
    base = Engine(old_locks.values())
    # Only namespaces whose locks differ are handed over, each with all its locks now.
    changed = {
        ns: [lk for lk in new_locks.values() if lk.namespace == ns]
        for ns in _NAMESPACES
        if {k: v for k, v in old_locks.items() if v.namespace == ns}
        != {k: v for k, v in new_locks.items() if v.namespace == ns}
    }
    incremental, _ = _drive(Engine.build(base, changed))
    full = Engine(new_locks.values())
    assert incremental.locks == full.locks
    for ns in _NAMESPACES:
        for op in Operation:
            assert incremental.covers(ns, op) == full.covers(ns, op)
            for aura in ("red", "blue", "green"):
                inp = AdmissionInput(
                    operation=op,
                    namespace=ns,
                    resource=PODS,
                    name="p",
                    user=ADMIN,
                    old_labels={"aura": aura},
                    new_labels={"aura": aura},
                )
                assert incremental.decide(inp) == full.decide(inp)


def test_a_build_yields_in_bounded_steps_and_reuses_unchanged_namespaces() -> None:
    many = [make_lock(f"l{i}", ["DELETE"], {"app": f"a{i}"}, namespace="big") for i in range(600)]
    base = Engine([*many, make_lock("other", ["DELETE"], namespace="small")])
    engine, steps = _drive(
        Engine.build(base, {"small": [make_lock("new", ["CREATE"], namespace="small")]})
    )
    # Only "small" was rebuilt (one step); "big" is the very same object.
    assert steps == 1
    assert engine._namespaces["big"] is base._namespaces["big"]
    assert [lk.key for lk in engine.namespace_locks("small")] == ["small/new"]
    _, full_steps = _drive(Engine.build(None, {"big": many}))
    assert full_steps >= 600 // 64
    gone, _ = _drive(Engine.build(engine, {"small": []}))
    assert not gone.covers("small", Operation.CREATE) and gone.lock_count == 600
