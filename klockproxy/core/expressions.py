"""Klock 3.x matcher expressions: parsed once when a Lock is loaded, evaluated fast.

Grammar (Klock 3.x)::

    expression := unary (("|" | "&") unary)*      # same precedence, left to right
    unary      := "^"* primary                    # "^" binds tighter than "|" and "&"
    primary    := OPERAND | "(" expression ")"

Every run of characters that are not ``| & ^ ( )`` is an operand, compared with the label's
value by exact string equality: nothing is trimmed, so ``red | blue`` has the operands
``"red "`` and ``" blue"``. An absent label evaluates as the empty string, so ``^black``
matches objects without the label.

Where Klock gives undefined results or crashes at request time (unbalanced parentheses, an
empty value or empty parentheses, dangling or doubled operators such as ``a||b`` or ``a&^|b``,
a missing operator as in ``(a)b``), :func:`compile_expression` raises
:class:`~klockproxy.core.errors.ExpressionError` with the 0-based position of the fault.
``^^a`` is a double negation, not an error.

An expression compiles to its exact meaning, a finite set of values or the complement of
one, so evaluating it is a single comparison or set lookup whatever its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from klockproxy.core.errors import ExpressionError

OPERATORS = frozenset("|&^()")

# Parentheses and "^" nest; parsing and compiling recurse once per level, so the depth is
# capped to keep a hostile lock file from exhausting the interpreter's stack. Real matchers
# nest 2 or 3 levels.
MAX_DEPTH = 64

Evaluator = Callable[[str], bool]
BinaryOp = Literal["|", "&"]


@dataclass(frozen=True, slots=True)
class Operand:
    """An operand: true when the label value equals ``value`` exactly."""

    value: str


@dataclass(frozen=True, slots=True)
class Not:
    """``^operand``."""

    operand: Node


@dataclass(frozen=True, slots=True)
class Chain:
    """``first op1 t1 op2 t2 ...`` folded left to right (``|`` and ``&`` share a precedence).

    Kept flat rather than as a left-deep binary tree so a long ``a|b|c|...`` does not
    recurse deeply when compiled.
    """

    first: Node
    rest: tuple[tuple[BinaryOp, Node], ...]


Node = Operand | Not | Chain


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A parsed matcher expression.

    ``evaluate(value)`` answers whether a label value (``""`` when absent) matches. The
    expression is compiled to its exact meaning: true for the finite set ``values``, or, when
    ``negated``, for every value except ``values``. ``values`` never contains ``""`` (an
    operand is never empty), so a negated expression matches an absent label and a plain one
    does not. The engine indexes locks by these sets.
    """

    source: str
    node: Node = field(compare=False, repr=False)
    values: frozenset[str] = field(compare=False, repr=False)
    negated: bool = field(compare=False, repr=False)
    evaluate: Evaluator = field(compare=False, repr=False)

    @property
    def accepted(self) -> frozenset[str] | None:
        """The finite set of values that match, or None when all but finitely many do."""
        return None if self.negated else self.values

    @property
    def rejected(self) -> frozenset[str] | None:
        """The finite set of values that do not match, or None when only finitely many do."""
        return self.values if self.negated else None

    def __call__(self, value: str) -> bool:
        """Same as :meth:`evaluate`."""
        return self.evaluate(value)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # one of "|&^()" or "operand"
    text: str
    pos: int


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    start = -1
    for i, ch in enumerate(source):
        if ch in OPERATORS:
            if start >= 0:
                tokens.append(_Token("operand", source[start:i], start))
                start = -1
            tokens.append(_Token(ch, ch, i))
        elif start < 0:
            start = i
    if start >= 0:
        tokens.append(_Token("operand", source[start:], start))
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.i = 0

    def fail(self, pos: int, reason: str) -> ExpressionError:
        return ExpressionError(self.source, pos, reason)

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Node:
        if not self.source:
            raise self.fail(0, "empty expression (Klock crashes on it; write a value)")
        node = self.expression(depth=0)
        tok = self.peek()
        if tok is not None:
            # Only a stray ")" can stop an expression early: every other token continues it.
            raise self.fail(tok.pos, "unbalanced ')' (no matching '(')")
        return node

    def expression(self, depth: int) -> Node:
        first = self.unary(depth)
        rest: list[tuple[BinaryOp, Node]] = []
        while True:
            tok = self.peek()
            if tok is None or tok.kind == ")":
                break
            if tok.kind == "|" or tok.kind == "&":
                self.i += 1
                op: BinaryOp = "|" if tok.kind == "|" else "&"
                rest.append((op, self.unary(depth)))
                continue
            # An operand or "(" or "^" right after a complete term: only possible after ")"
            # since operands are maximal runs, e.g. "(a)b" or "(a)(b)" or "(a)^b".
            raise self.fail(tok.pos, f"missing operator before {tok.text!r}")
        return first if not rest else Chain(first, tuple(rest))

    def unary(self, depth: int) -> Node:
        nots = 0
        while (tok := self.peek()) is not None and tok.kind == "^":
            nots += 1
            self.i += 1
        if depth + nots > MAX_DEPTH:
            pos = self.tokens[self.i - 1].pos if self.i else 0
            raise self.fail(pos, f"nested deeper than {MAX_DEPTH} levels")
        node = self.primary(depth + nots)
        for _ in range(nots):
            node = Not(node)
        return node

    def primary(self, depth: int) -> Node:
        tok = self.peek()
        if tok is None:
            end = len(self.source)
            prev = self.tokens[self.i - 1] if self.i else None
            if prev is not None and prev.kind in "|&^":
                raise self.fail(prev.pos, f"dangling operator {prev.text!r} (no operand after it)")
            raise self.fail(end, "unbalanced '(' (expression ends before its ')')")
        if tok.kind == "operand":
            self.i += 1
            return Operand(tok.text)
        if tok.kind == "(":
            if depth + 1 > MAX_DEPTH:
                raise self.fail(tok.pos, f"nested deeper than {MAX_DEPTH} levels")
            self.i += 1
            inner_tok = self.peek()
            if inner_tok is not None and inner_tok.kind == ")":
                raise self.fail(tok.pos, "empty parentheses")
            node = self.expression(depth + 1)
            close = self.peek()
            if close is None:
                raise self.fail(tok.pos, "unbalanced '(' (no matching ')')")
            self.i += 1  # the ")" that stopped the inner expression
            return node
        prev = self.tokens[self.i - 1] if self.i else None
        if tok.kind == ")":
            if prev is not None and prev.kind in "|&^":
                raise self.fail(prev.pos, f"dangling operator {prev.text!r} before ')'")
            raise self.fail(tok.pos, "expected a value before ')'")
        # "|" or "&" where an operand must be: doubled or leading operator.
        if prev is not None and prev.kind in "|&^":
            raise self.fail(tok.pos, f"doubled operator {prev.text + tok.text!r}")
        raise self.fail(tok.pos, f"operator {tok.text!r} without a value before it")


def parse_node(source: str) -> Node:
    """Parse an expression into its syntax tree; raises ExpressionError with the position."""
    return _Parser(source).parse()


def _value_set(node: Node) -> tuple[set[str], bool]:
    """The exact meaning of ``node`` as ``(values, negated)``.

    Every expression of this grammar is a boolean combination of "value == operand" tests,
    so it is true either exactly for a finite set of values (``negated`` False) or for every
    value except a finite set (``negated`` True). Evaluating it is then one set lookup.
    """
    if isinstance(node, Operand):
        return {node.value}, False
    if isinstance(node, Not):
        values, negated = _value_set(node.operand)
        return values, not negated
    acc, acc_neg = _value_set(node.first)
    for op, term in node.rest:
        other, other_neg = _value_set(term)
        if op == "|":
            if not acc_neg and not other_neg:
                acc |= other
            elif not acc_neg:  # finite | cofinite: all but (other - acc)
                acc, acc_neg = other - acc, True
            elif not other_neg:  # cofinite | finite
                acc -= other
            else:
                acc &= other
        elif not acc_neg and not other_neg:
            acc &= other
        elif not acc_neg:  # finite & cofinite
            acc -= other
        elif not other_neg:  # cofinite & finite
            acc, acc_neg = other - acc, False
        else:
            acc |= other
    return acc, acc_neg


def compile_expression(source: str) -> CompiledExpression:
    """Parse and compile ``source``; raises ExpressionError naming the fault's position."""
    node = parse_node(source)
    values, negated = _value_set(node)
    frozen = frozenset(values)
    evaluate: Evaluator
    if not negated and len(frozen) == 1:
        (expected,) = frozen
        evaluate = expected.__eq__  # "red": one string comparison
    elif not negated:
        evaluate = frozen.__contains__
    else:

        def evaluate(value: str) -> bool:
            return value not in frozen

    return CompiledExpression(
        source=source, node=node, values=frozen, negated=negated, evaluate=evaluate
    )


def matches(source: str, value: str) -> bool:
    """One-shot convenience: does ``value`` satisfy expression ``source``?"""
    return compile_expression(source).evaluate(value)


def render(node: Node) -> str:
    """Render a syntax tree back to expression text (parenthesised only where needed)."""
    if isinstance(node, Operand):
        return node.value
    if isinstance(node, Not):
        inner = node.operand
        return "^" + (render(inner) if not isinstance(inner, Chain) else f"({render(inner)})")
    parts = [render(node.first)]
    for op, term in node.rest:
        text = render(term)
        parts.append(op + (f"({text})" if isinstance(term, Chain) else text))
    return "".join(parts)
