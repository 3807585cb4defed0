"""SIGINT within ``interrupt.deferred()`` only sets a flag: the code stops where it checks it."""
import os
import signal
import threading

import pytest

from jaxreg.train import interrupt


def _sigint():
    os.kill(os.getpid(), signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary: the handler has run


def test_sigint_is_deferred_to_the_next_check():
    steps = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred():
            _sigint()
            steps.append("after the signal")  # not interrupted here
            assert interrupt.requested()
            interrupt.check()
            steps.append("after the check")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_leaving_the_block_after_a_sigint_raises():
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred():
            with interrupt.deferred():  # nested: one flag, the outermost block raises
                _sigint()
            assert interrupt.requested()
    with interrupt.deferred():  # a new block starts with the flag clear
        assert not interrupt.requested()
        interrupt.check()


def test_outside_the_main_thread_nothing_changes():
    seen = []

    def worker():
        with interrupt.deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [before] and signal.getsignal(signal.SIGINT) is before


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_sigterm_is_deferred_too_and_exits_143():
    """Issue 25 item 14: SIGTERM (clusters, preemptible VMs) stops at the next safe point as
    SIGINT does, with ``Terminated``: a ``SystemExit(143)``, quiet when uncaught."""
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(interrupt.Terminated) as stopped:
        with interrupt.deferred():
            _sigterm()
            steps.append("after the signal")
            assert interrupt.requested()
            interrupt.check()
            steps.append("after the check")
    assert steps == ["after the signal"] and stopped.value.code == 143
    assert isinstance(stopped.value, SystemExit)
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(interrupt.Terminated):  # the block's end raises it too, SIGINT or not
        with interrupt.deferred():
            _sigint()
            _sigterm()


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job
    try:
        with interrupt.deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _sigint()
            assert not interrupt.requested()
    finally:
        signal.signal(signal.SIGINT, previous)
