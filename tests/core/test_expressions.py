"""Matcher expressions: Klock's unit cases, load-time rejection, and property tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.core.errors import ExpressionError
from klockproxy.core.expressions import MAX_DEPTH, compile_expression, matches, render

# --- Klock's own unit cases (pkg/webhook eval tests), as listed in the reference -------------


@pytest.mark.parametrize(
    ("expression", "value", "expected"),
    [
        ("test", "test", True),
        ("test", "not_match", False),
        ("red|blue", "blue", True),
        ("(red|green)&blue", "green", False),
        ("red|green&^blue", "green", True),
    ],
)
def test_klock_unit_cases(expression: str, value: str, expected: bool) -> None:
    assert matches(expression, value) is expected


def test_klock_unit_case_that_is_an_error() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("red|green&^|^|^blue")
    assert info.value.position == 11
    assert "doubled operator '^|'" in str(info.value)


# --- semantics ---------------------------------------------------------------------------


def test_and_or_share_precedence_left_to_right() -> None:
    # (red|green) & ^blue, not red | (green & ^blue)
    assert matches("red|green&^blue", "red") is True
    assert matches("red|green&blue", "red") is False  # (red|green)&blue
    assert matches("red&blue|green", "green") is True  # (red&blue)|green
    assert matches("red|(green&blue)", "red") is True


def test_not_binds_tighter_than_and_or() -> None:
    assert matches("^red|red", "red") is True  # (^red)|red
    assert matches("^(red|blue)", "red") is False
    assert matches("^(red|blue)", "green") is True
    assert matches("^^red", "red") is True


def test_absent_label_is_the_empty_string() -> None:
    assert matches("^black", "") is True
    assert matches("black", "") is False
    assert matches("^(red|blue)", "") is True


def test_operands_are_exact_no_trimming() -> None:
    assert matches("red | blue", "red ") is True
    assert matches("red | blue", "red") is False
    assert matches("red | blue", " blue") is True
    assert matches("Red", "red") is False


def test_klock_e2e_expressions() -> None:
    assert matches("^wind", "wind") is False
    assert matches("^wind", "fire") is True


@pytest.mark.parametrize(
    ("expression", "position", "fragment"),
    [
        ("", 0, "empty expression"),
        ("()", 0, "empty parentheses"),
        ("a&()", 2, "empty parentheses"),
        ("(red", 0, "unbalanced '('"),
        ("((red)", 0, "unbalanced '('"),
        ("red)", 3, "unbalanced ')'"),
        ("(red))|blue", 5, "unbalanced ')'"),
        ("red||blue", 4, "doubled operator '||'"),
        ("red|&blue", 4, "doubled operator '|&'"),
        ("red&^&blue", 5, "doubled operator '^&'"),
        ("|red", 0, "operator '|' without a value"),
        ("(&red)", 1, "operator '&' without a value"),
        ("red|", 3, "dangling operator '|'"),
        ("red&", 3, "dangling operator '&'"),
        ("^", 0, "dangling operator '^'"),
        ("red^", 3, "missing operator before '^'"),
        ("(red)blue", 5, "missing operator before 'blue'"),
        ("red(blue)", 3, "missing operator before '('"),
        ("(red|)", 4, "dangling operator '|' before ')'"),
    ],
)
def test_malformed_expressions_are_rejected_with_position(
    expression: str, position: int, fragment: str
) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(expression)
    assert info.value.position == position
    assert fragment in info.value.reason
    assert f"at position {position}" in str(info.value)


def test_nesting_is_capped_instead_of_exhausting_the_stack() -> None:
    ok = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert matches(ok, "a") is True
    with pytest.raises(ExpressionError, match="nested deeper"):
        compile_expression("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError, match="nested deeper"):
        compile_expression("^" * (MAX_DEPTH + 1) + "a")


def test_long_flat_chains_do_not_recurse() -> None:
    values = [f"v{i}" for i in range(5000)]
    expr = compile_expression("|".join(values))
    assert expr.evaluate("v4999") is True
    assert expr.evaluate("v5000") is False
    mixed = compile_expression("&".join(["a|b"] * 3000))
    assert mixed.evaluate("a") is True


def test_expressions_compile_to_exact_value_sets() -> None:
    assert compile_expression("red").accepted == {"red"}
    assert compile_expression("red|blue").accepted == {"red", "blue"}
    assert compile_expression("(red|blue)&^blue").accepted == {"red"}
    assert compile_expression("(red|blue)&blue").accepted == {"blue"}
    assert compile_expression("red&blue").accepted == frozenset()
    assert compile_expression("^^red").accepted == {"red"}
    negated = compile_expression("^red")
    assert (negated.accepted, negated.rejected) == (None, {"red"})
    assert compile_expression("red|^blue").rejected == {"blue"}
    assert compile_expression("red|^red").rejected == frozenset()  # always true
    assert compile_expression("^(red|blue)&^green").rejected == {"red", "blue", "green"}
    assert compile_expression("^red|^blue").rejected == frozenset()


def test_compiled_expressions_compare_by_source() -> None:
    assert compile_expression("a|b") == compile_expression("a|b")
    assert compile_expression("a|b") != compile_expression("b|a")
    assert compile_expression("a")("a") is True


# --- property tests against an independent evaluator --------------------------------------


@dataclass(frozen=True)
class Ref:
    """Reference AST: deliberately binary and separate from the module's own."""

    op: str  # "lit", "not", "|", "&"
    value: str = ""
    left: Ref | None = None
    right: Ref | None = None


def ref_eval(node: Ref, label: str) -> bool:
    if node.op == "lit":
        return label == node.value
    assert node.left is not None
    if node.op == "not":
        return not ref_eval(node.left, label)
    assert node.right is not None
    if node.op == "|":
        return ref_eval(node.left, label) or ref_eval(node.right, label)
    return ref_eval(node.left, label) and ref_eval(node.right, label)


OPERANDS = st.sampled_from(["red", "blue", "green", "a b", " x", "y ", "."])

refs = st.recursive(
    OPERANDS.map(lambda v: Ref("lit", v)),
    lambda children: st.one_of(
        children.map(lambda c: Ref("not", left=c)),
        st.tuples(st.sampled_from("|&"), children, children).map(
            lambda t: Ref(t[0], left=t[1], right=t[2])
        ),
    ),
    max_leaves=12,
)

LABELS = st.one_of(OPERANDS, st.just(""), st.text(max_size=4))


def fully_parenthesised(node: Ref) -> str:
    if node.op == "lit":
        return node.value
    assert node.left is not None
    if node.op == "not":
        return f"^({fully_parenthesised(node.left)})"
    assert node.right is not None
    return f"({fully_parenthesised(node.left)}{node.op}{fully_parenthesised(node.right)})"


def minimal(node: Ref) -> str:
    if node.op == "lit":
        return node.value
    assert node.left is not None
    if node.op == "not":
        inner = minimal(node.left)
        return "^" + (f"({inner})" if node.left.op in "|&" else inner)
    assert node.right is not None
    right = minimal(node.right)
    return minimal(node.left) + node.op + (f"({right})" if node.right.op in "|&" else right)


@settings(max_examples=300, deadline=None)
@given(refs, st.lists(LABELS, min_size=1, max_size=6))
def test_parser_agrees_with_independent_evaluator(node: Ref, labels: list[str]) -> None:
    full = compile_expression(fully_parenthesised(node))
    short = compile_expression(minimal(node))
    for label in labels:
        expected = ref_eval(node, label)
        assert full.evaluate(label) is expected
        assert short.evaluate(label) is expected


@settings(max_examples=300, deadline=None)
@given(refs, LABELS)
def test_render_round_trips_meaning(node: Ref, label: str) -> None:
    compiled = compile_expression(minimal(node))
    again = compile_expression(render(compiled.node))
    assert again.evaluate(label) is compiled.evaluate(label)


@settings(max_examples=300, deadline=None)
@given(refs, LABELS)
def test_value_sets_are_exact(node: Ref, label: str) -> None:
    compiled = compile_expression(minimal(node))
    if compiled.accepted is not None:
        assert (label in compiled.accepted) is ref_eval(node, label)
    if compiled.rejected is not None:
        assert (label not in compiled.rejected) is ref_eval(node, label)
    assert "" not in compiled.values


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab |&^()", max_size=12))
def test_any_text_parses_or_raises_expression_error(text: str) -> None:
    try:
        compiled = compile_expression(text)
    except ExpressionError as e:
        assert 0 <= e.position <= len(text)
    else:
        assert isinstance(compiled.evaluate("a"), bool)
