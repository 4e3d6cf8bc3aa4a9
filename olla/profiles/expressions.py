# -*- test-case-name: tests.test_profiles -*-
"""The little expression language of a profile's ``metrics.extraction.calculations``.

The Go original evaluates them with expr-lang; the profiles use a small part of it, which is
all this reads: numbers, strings, ``null``, figure names, ``len(x)``, ``! -``, ``* /``,
``+ -``, comparisons, ``&& ||`` and ``c ? a : b``, with parentheses. An expression is compiled
once, when the profile loads (a syntax error stops startup naming the key), and evaluated
over the figures one answer carried: a missing figure is ``null``, arithmetic on ``null`` is
0, and the result is a number (``true`` is 1). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Value = float | str | bool | None
Env = Mapping[str, Value]
Node = Callable[[Env], Value]

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)"
    r"|(?P<string>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|>=|<=|[-+*/()?:<>!]))"
)


class ExpressionError(ValueError):
    """An expression that cannot be read; the message says where."""


@dataclass(frozen=True)
class Expression:
    """A compiled expression: ``names`` are the figures it reads."""

    text: str
    names: frozenset[str]
    _node: Node

    def evaluate(self, env: Env) -> float:
        return _number(self._node(env))


def compile_expression(text: str) -> Expression:
    """Compile ``text``; raises :class:`ExpressionError` naming the problem."""
    tokens = _tokenise(text)
    parser = _Parser(tokens, text)
    node = parser.ternary()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} in {text!r}")
    return Expression(text, frozenset(parser.names), node)


def _tokenise(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"cannot read {text[pos:].strip()[:10]!r} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _number(value: Value) -> float:
    if type(value) is float:  # nearly every figure (read_figures gives numbers as floats)
        return value
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        return 0.0
    return float(value)


def _truth(value: Value) -> bool:
    if isinstance(value, str):
        return value != ""
    return bool(value)


def _compare(op: str, a: Value, b: Value) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if a is None or b is None:
        return False
    if isinstance(a, str) or isinstance(b, str):
        x, y = str(a), str(b)
        return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
    fa, fb = _number(a), _number(b)
    return {"<": fa < fb, "<=": fa <= fb, ">": fa > fb, ">=": fa >= fb}[op]


def _arith(op: str, a: Value, b: Value) -> Value:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    fa, fb = _number(a), _number(b)
    if op == "+":
        return fa + fb
    if op == "-":
        return fa - fb
    if op == "*":
        return fa * fb
    return fa / fb if fb else 0.0


def _length(value: Value) -> Value:
    return float(len(value)) if isinstance(value, str) else 0.0


class _Parser:
    """Recursive descent, lowest precedence first."""

    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self._tokens = tokens
        self._pos = 0
        self._text = text
        self.names: set[str] = set()

    def peek(self) -> str | None:
        return self._tokens[self._pos][1] if self._pos < len(self._tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self._pos >= len(self._tokens):
            raise ExpressionError(f"{self._text!r} ends too early")
        token = self._tokens[self._pos]
        if expected is not None and token[1] != expected:
            raise ExpressionError(f"expected {expected!r}, got {token[1]!r} in {self._text!r}")
        self._pos += 1
        return token

    def ternary(self) -> Node:
        condition = self._binary(0)
        if self.peek() != "?":
            return condition
        self._take("?")
        then = self.ternary()
        self._take(":")
        otherwise = self.ternary()
        return lambda env: then(env) if _truth(condition(env)) else otherwise(env)

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!=", "<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def _binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self._unary()
        left = self._binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self._take()[1]
            right = self._binary(level + 1)
            left = _combine(op, left, right)
        return left

    def _unary(self) -> Node:
        if self.peek() == "!":
            self._take()
            inner = self._unary()
            return lambda env: not _truth(inner(env))
        if self.peek() == "-":
            self._take()
            negated = self._unary()
            return lambda env: -_number(negated(env))
        return self._atom()

    def _atom(self) -> Node:
        kind, text = self._take()
        if text == "(" and kind == "op":
            inner = self.ternary()
            self._take(")")
            return inner
        if kind == "number":
            number = float(text)
            return lambda env: number
        if kind == "string":
            literal = text[1:-1].encode().decode("unicode_escape")
            return lambda env: literal
        if kind == "name":
            if text in ("null", "nil"):
                return lambda env: None
            if text in ("true", "false"):
                flag = text == "true"
                return lambda env: flag
            if text == "len" and self.peek() == "(":
                self._take("(")
                argument = self.ternary()
                self._take(")")
                return lambda env: _length(argument(env))
            self.names.add(text)
            return lambda env: env.get(text)
        raise ExpressionError(f"unexpected {text!r} in {self._text!r}")


def _combine(op: str, left: Node, right: Node) -> Node:
    if op == "||":
        return lambda env: _truth(left(env)) or _truth(right(env))
    if op == "&&":
        return lambda env: _truth(left(env)) and _truth(right(env))
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return lambda env: _compare(op, left(env), right(env))
    # the operator chosen once, here, not at each evaluation (every answer evaluates its
    # profile's calculations); ``+`` also joins two strings, so it goes through ``_arith``
    if op == "-":
        return lambda env: _number(left(env)) - _number(right(env))
    if op == "*":
        return lambda env: _number(left(env)) * _number(right(env))
    if op == "/":
        return lambda env: _divide(_number(left(env)), _number(right(env)))
    return lambda env: _arith(op, left(env), right(env))


def _divide(a: float, b: float) -> float:
    return a / b if b else 0.0
