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
