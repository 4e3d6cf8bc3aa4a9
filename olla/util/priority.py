# -*- test-case-name: tests.test_priority -*-
"""Request priorities: what ``X-Olla-Priority`` asks for, within what the client key allows.

A request asks with ``X-Olla-Priority: high|normal|low`` (any case); without the header it is
``normal``. With client keys configured, a key's ``priority`` is its ceiling: the request gets
what it asks for, but never more than that (a key without one may ask for ``normal`` at most,
so ``high`` is something an operator hands out). Without client keys the header is honoured.
An unknown value is the client's mistake and is refused, not quietly read as ``normal``.
"""

from __future__ import annotations

import enum

#: the request header a client asks for a priority with
PRIORITY_HEADER = b"x-olla-priority"


class Priority(enum.IntEnum):
    """Lower is served first, so ordering by the value orders by urgency."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        """``high``, ``normal`` or ``low``: the spelling of the header and the config."""
        return self.name.lower()


#: the ceiling of a client key whose entry names no ``priority``
DEFAULT_CEILING = Priority.NORMAL


class PriorityError(ValueError):
    """An ``X-Olla-Priority`` value (or a config value) that names no priority."""


def parse_priority(value: str | bytes) -> Priority:
    """``high``/``normal``/``low`` in any case, surrounding spaces ignored.

    Raises:
        PriorityError: naming the value and the three that are allowed.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        return Priority[text.strip().upper()]
    except KeyError:
        raise PriorityError(f"must be high, normal or low, got {text.strip()!r}") from None


def request_priority(header: bytes | None, ceiling: Priority | None = None) -> Priority:
    """The priority one request gets: what its ``X-Olla-Priority`` asks for (``normal``
    without the header), lowered to ``ceiling`` (its client key's; None: no client keys).

    Raises:
        PriorityError: the header names no priority.
    """
    asked = Priority.NORMAL if header is None else parse_priority(header)
    if ceiling is None:
        return asked
    return max(asked, ceiling)  # a larger value is a lower priority
