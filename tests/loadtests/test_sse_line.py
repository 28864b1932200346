"""The waiting-room bench's reading of its streams, without a server."""

from __future__ import annotations

from loadtests.sse_line import first_seen, moment, passed_at
from loadtests.sse_streams import LINE_FIGURES, Subscriber


def test_the_line_is_seen_passing_a_position_at_its_first_sighting():
    """The moment a position was first seen admitted is the earliest event, on any stream,
    whose admittedUpTo reached it, not the moment its own stream heard."""
    early, late = Subscriber(figures=LINE_FIGURES), Subscriber(figures=LINE_FIGURES)
    early.seen = [(1.0, ("line", b'{"admittedUpTo":2}')), (3.0, ("line", b'{"admittedUpTo":9}'))]
    late.seen = [(2.0, ("line", b'{"admittedUpTo":5}')), (4.0, ("admitted", b'{"admittedUpTo":9}'))]
    times, values = first_seen([early, late])
    assert [passed_at(times, values, p) for p in (1, 2, 3, 5, 6, 9)] == [1.0, 1.0, 2.0, 2.0,
                                                                          3.0, 3.0]


def test_a_wire_timestamp_is_read_in_utc():
    """An ``admittedAt`` in the wire's form is the same instant as seconds since the epoch."""
    assert moment("2026-12-02T20:00:00.250Z") == 1_796_241_600.25
