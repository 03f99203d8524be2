"""Between two batches a reader lets the event loop run until idle, but never waits long."""

from __future__ import annotations

import gevent
import gevent.socket

from logger.reader import let_others_run


def _round_trips(steps: int) -> list[int]:
    """Two greenlets that ping-pong over a socket pair: each step needs the loop once more."""
    asker, echoer = gevent.socket.socketpair()
    done: list[int] = []

    def echo() -> None:
        for _ in range(steps):
            echoer.sendall(echoer.recv(16))

    def ask() -> None:
        for step in range(steps):
            asker.sendall(b"x")
            asker.recv(16)
            done.append(step)

    gevent.spawn(echo)
    gevent.spawn(ask)
    return done


def test_pending_io_runs_to_the_end_before_the_reader_goes_on():
    # A /health request is such a chain (accept, read, answer): gevent.sleep(0)
    # would have let none of these steps run.
    done = _round_trips(20)
    let_others_run()
    assert len(done) == 20


def test_a_loop_that_never_goes_idle_does_not_starve_the_reader():
    def spin() -> None:
        while True:
            gevent.sleep(0)

    spinner = gevent.spawn(spin)
    try:
        gevent.with_timeout(5, let_others_run, 0.05)  # raises gevent.Timeout if it never returned
    finally:
        spinner.kill()
