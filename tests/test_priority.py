"""Request priorities: the header, and a client key's ceiling."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from olla.util.priority import Priority, PriorityError, parse_priority, request_priority


class PriorityTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """If a value names a priority in any case, with spaces around, then it parses."""
        self.assertIs(parse_priority("high"), Priority.HIGH)
        self.assertIs(parse_priority(b" Normal "), Priority.NORMAL)
        self.assertIs(parse_priority("LOW"), Priority.LOW)
        self.assertEqual(Priority.LOW.label, "low")

    def test_unknown_refused(self) -> None:
        """If a value names no priority, then it is refused with the allowed values."""
        for value in ("urgent", "", "1", b"hi"):
            with self.assertRaises(PriorityError) as caught:
                parse_priority(value)
            self.assertIn("must be high, normal or low", str(caught.exception))

    def test_header_honoured_without_keys(self) -> None:
        """If no client keys are configured (no ceiling), then the header decides; without
        it a request is normal."""
        self.assertIs(request_priority(b"high"), Priority.HIGH)
        self.assertIs(request_priority(b"low"), Priority.LOW)
        self.assertIs(request_priority(None), Priority.NORMAL)

    def test_key_ceiling(self) -> None:
        """If the client key's ceiling is normal, then high is lowered to normal and low stays
        low; a high key may ask for high; a low key gets low whatever it asks."""
        self.assertIs(request_priority(b"high", Priority.NORMAL), Priority.NORMAL)
        self.assertIs(request_priority(b"low", Priority.NORMAL), Priority.LOW)
        self.assertIs(request_priority(b"high", Priority.HIGH), Priority.HIGH)
        self.assertIs(request_priority(None, Priority.HIGH), Priority.NORMAL)
        self.assertIs(request_priority(b"high", Priority.LOW), Priority.LOW)
        self.assertIs(request_priority(None, Priority.LOW), Priority.LOW)

    def test_ordering(self) -> None:
        """If priorities are sorted, then high comes first."""
        self.assertEqual(sorted(Priority, reverse=True)[::-1][0], Priority.HIGH)
        self.assertLess(Priority.HIGH, Priority.NORMAL)
