"""Reading ahead: the next chunk of a log is read while the one before is typed."""

import threading
from collections.abc import Iterator

import pytest

from clickloop.readers import read_ahead

#: how long a test waits for the reader thread before it calls the read-ahead missing
WAIT_S = 10


def test_every_item_comes_in_order() -> None:
    assert list(read_ahead(iter(range(1000)))) == list(range(1000))
    assert list(read_ahead(iter([]))) == []


def test_the_next_item_is_read_while_the_caller_works_on_this_one() -> None:
    second_read = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        second_read.set()
        yield 2

    chunks = read_ahead(items())
    assert next(chunks) == 1
    assert second_read.wait(WAIT_S), "the second item was not read while the first was in use"
    assert list(chunks) == [2]


def test_an_error_of_the_reader_is_raised_at_the_item_it_failed_on() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("the file went away at line 3")

    received = []
    with pytest.raises(OSError, match="went away at line 3"):
        for item in read_ahead(items()):
            received.append(item)
    assert received == [1, 2]


def test_a_caller_that_stops_early_stops_the_reader() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    chunks = read_ahead(items())
    assert next(chunks) == 0
    chunks.close()
    assert closed.wait(WAIT_S), "the reader kept reading after the caller stopped"
    assert not [t for t in threading.enumerate() if t.name == "clickloop-read-ahead"]
