# -*- test-case-name: tests.test_profiles -*-
"""The little expression language of a profile's ``metrics.extraction.calculations``.

The Go original evaluates them with expr-lang; the profiles use a small part of it, which is
all this reads: numbers, strings, ``null``, figure names, ``len(x)``, ``! -``, ``* /``,
``+ -``, comparisons, ``&& ||`` and ``c ? a : b``, with parentheses. An expression is compiled
once, when the profile loads (a syntax error stops startup naming the key), and evaluated
over the figures one answer carried: a missing figure is ``null``, arithmetic on ``null`` is
0, and the result is a number (``true`` is 1). Pure.

Every answer evaluates its profile's calculations, so an expression is compiled to one Python
function, as ``dataclasses`` builds its methods: the parsed tree is written out as Python
source (figure names and literals only ever through ``repr``) and compiled once. A tree of
closures, one call per node, cost four times as much.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Value = float | str | bool | None
Env = Mapping[str, Value]
#: a compiled expression: the figures in, a number out
Node = Callable[[Env], float]

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
        return self._node(env)  # compiled as a number (``_Code.number``)


def compile_expression(text: str) -> Expression:
    """Compile ``text``; raises :class:`ExpressionError` naming the problem."""
    tokens = _tokenise(text)
    parser = _Parser(tokens, text)
    try:
        code = parser.ternary()
        if parser.peek() is not None:
            raise ExpressionError(f"unexpected {parser.peek()!r} in {text!r}")
        source = compile(f"lambda env: {code.number()}", "<profile expression>", "eval")
    except (RecursionError, MemoryError, SyntaxError) as e:
        raise ExpressionError(f"{text[:40]!r}... is nested too deeply") from e
    node: Node = eval(source, dict(_HELPERS))  # source written by the parse above, not text
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


# --------------------------------------------------------------------------- evaluation helpers
# (the compiled source calls these by name)


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


def _plus(a: Value, b: Value) -> Value:
    """``+`` also joins two strings."""
    if isinstance(a, str) and isinstance(b, str):
        return a + b
    return _number(a) + _number(b)


def _divide(a: float, b: float) -> float:
    return a / b if b else 0.0


def _length(value: Value) -> Value:
    return float(len(value)) if isinstance(value, str) else 0.0


_HELPERS: dict[str, object] = {
    "__builtins__": {},
    "_float": float,
    "_number": _number,
    "_truth": _truth,
    "_compare": _compare,
    "_plus": _plus,
    "_divide": _divide,
    "_length": _length,
}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Code:
    """A parsed sub-expression as Python source. ``kind``: ``float`` when it always gives a
    float, ``bool`` when it always gives a bool, else ``any``; ``constant``: a number
    literal's value."""

    source: str
    kind: str = "any"
    constant: float | None = None
    #: a figure's name, when this reads one
    name: str | None = None

    def number(self) -> str:
        """Source for this as a number (``_number`` only where it may not be one). A figure is
        nearly always a float already: that is checked inline, and ``_number`` called only
        when it is not. (``_v`` is read right after it is set, before any other read of a
        figure, so every figure can use it.)"""
        if self.kind == "float":
            return self.source
        if self.name is not None:
            return f"(_v if (_v := {self.source}).__class__ is _float else _number(_v))"
        return f"_number({self.source})"

    def truth(self) -> str:
        """Source for this as a truth value."""
        return self.source if self.kind == "bool" else f"_truth({self.source})"


class _Parser:
    """Recursive descent, lowest precedence first; each rule returns Python source."""

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

    def ternary(self) -> _Code:
        condition = self._binary(0)
        if self.peek() != "?":
            return condition
        self._take("?")
        then = self.ternary()
        self._take(":")
        otherwise = self.ternary()
        kind = then.kind if then.kind == otherwise.kind else "any"
        source = f"({then.source} if {condition.truth()} else {otherwise.source})"
        return _Code(source, kind)

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!=", "<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def _binary(self, level: int) -> _Code:
        if level == len(self._LEVELS):
            return self._unary()
        left = self._binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self._take()[1]
            right = self._binary(level + 1)
            left = _combine(op, left, right)
        return left

    def _unary(self) -> _Code:
        if self.peek() == "!":
            self._take()
            inner = self._unary()
            return _Code(f"(not {inner.truth()})", "bool")
        if self.peek() == "-":
            self._take()
            negated = self._unary()
            return _Code(f"(-{negated.number()})", "float")
        return self._atom()

    def _atom(self) -> _Code:
        kind, text = self._take()
        if text == "(" and kind == "op":
            inner = self.ternary()
            self._take(")")
            return inner
        if kind == "number":
            number = float(text)
            return _Code(repr(number), "float", number)
        if kind == "string":
            return _Code(repr(text[1:-1].encode().decode("unicode_escape")))
        if kind == "name":
            if text in ("null", "nil"):
                return _Code("None")
            if text in ("true", "false"):
                return _Code(repr(text == "true"), "bool")
            if text == "len" and self.peek() == "(":
                self._take("(")
                argument = self.ternary()
                self._take(")")
                return _Code(f"_length({argument.source})")
            self.names.add(text)
            return _Code(f"env.get({text!r})", name=text)
        raise ExpressionError(f"unexpected {text!r} in {self._text!r}")


def _combine(op: str, left: _Code, right: _Code) -> _Code:
    if op == "||":
        return _Code(f"({left.truth()} or {right.truth()})", "bool")
    if op == "&&":
        return _Code(f"({left.truth()} and {right.truth()})", "bool")
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return _Code(f"_compare({op!r}, {left.source}, {right.source})", "bool")
    if op in ("-", "*"):
        return _Code(f"({left.number()} {op} {right.number()})", "float")
    if op == "/":
        if right.constant:  # a non-zero literal: no zero to guard against
            return _Code(f"({left.number()} / {right.source})", "float")
        return _Code(f"_divide({left.number()}, {right.number()})", "float")
    if left.kind == "float" and right.kind == "float":
        return _Code(f"({left.source} + {right.source})", "float")
    return _Code(f"_plus({left.source}, {right.source})")
