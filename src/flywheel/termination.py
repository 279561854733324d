"""SIGTERM (a pod being stopped, ``kill``) unwinds every ``flywheel`` command like Ctrl-C, and is never lost.

One module-level state: signals are per process."""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator

from flywheel.errors import Terminated

log = logging.getLogger("flywheel")


@dataclass
class _Termination:
    """SIGTERM in this process (signals are per process, so this is one module-level instance)."""

    received: bool = False  # a SIGTERM arrived since the handler was installed
    deferred: int = 0  # inside termination_deferred: the handler only records it
    in_flight: Callable[[], Terminated | None] = lambda: None  # (a weak reference to) the last Terminated raised
    arrived: threading.Event = field(default_factory=threading.Event)  # wakes the watcher
    watcher: threading.Thread | None = None


_termination = _Termination()


def install_termination_handler() -> Callable[[], None]:
    """SIGTERM (a pod being stopped, ``kill``) unwinds like Ctrl-C, so runs end as KILLED, not RUNNING.

    The handler raises ``Terminated`` wherever the main thread is. Where that is a callback the interpreter runs
    itself (the weakref callback of a thread pool MLflow or a library dropped, a ``__del__``), Python prints
    "Exception ignored in ..." and goes on; C code that clears errors drops it without a word. Either way the
    signal was lost and the run finished with exit 0. So the handler records it, and a watcher thread raises it
    again in the main thread as long as no ``Terminated`` is in flight (one that unwinds the stack is alive;
    a lost one is freed at once); the next safe point raises it too (``raise_if_terminated``: every stage's
    start, before MLflow ends a run, before ``flywheel`` exits). A SIGTERM while a ``Terminated`` unwinds does
    nothing: the unwinding ends the MLflow runs as KILLED and must not be cut short.

    Signals reach only the main thread; elsewhere nothing is installed. Returns a function that puts the
    previous handlers back and forgets the signal (``flywheel.cli.main`` called in-process, tests).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _on_sigterm:
        return lambda: None
    previous_handler, previous_hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook

    def hook(report) -> None:
        if isinstance(report.exc_value, Terminated):  # lost where it was raised; the watcher raises it again
            log.debug("SIGTERM arrived inside %r; raising it again", report.object)
        else:
            previous_hook(report)

    def restore() -> None:
        _termination.received = False  # first: the watcher stops raising it
        _termination.deferred = 0
        _termination.in_flight = lambda: None
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_handler is None else previous_handler)
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous_hook

    if _termination.watcher is None:
        _termination.watcher = threading.Thread(target=_watch, name="flywheel-sigterm", daemon=True)
        _termination.watcher.start()
    sys.unraisablehook = hook
    signal.signal(signal.SIGTERM, _on_sigterm)
    return restore


def _on_sigterm(signum, frame) -> None:
    _termination.received = True
    _termination.arrived.set()
    if not _termination.deferred and _termination.in_flight() is None:
        raise _new_termination()


@contextlib.contextmanager
def termination_deferred() -> Iterator[None]:
    """A SIGTERM inside the block is raised when it ends: around a call that must not be cut in the middle (an
    MLflow store request: cut inside its database commit, it left the client's session broken, and the runs the
    unwinding should end as KILLED stayed RUNNING)."""
    _termination.deferred += 1
    try:
        yield
    finally:
        _termination.deferred -= 1
    if not _termination.deferred and _termination.received and _termination.in_flight() is None:
        raise _new_termination()


def _new_termination() -> Terminated:
    error = Terminated(f"signal {int(signal.SIGTERM)}")
    _termination.in_flight = weakref.ref(error)
    return error


def _watch() -> None:
    """Raise SIGTERM again in the main thread while it was received and no ``Terminated`` is in flight."""
    while True:
        _termination.arrived.wait()
        _termination.arrived.clear()
        while _termination.received:
            time.sleep(0.05)  # also: out of the callback that lost it (the handler would run inside it again)
            if _termination.received and _termination.in_flight() is None:
                _thread.interrupt_main(signal.SIGTERM)  # as if it arrived again: the handler runs in the main thread


def raise_if_terminated() -> None:
    """Raise ``Terminated`` if SIGTERM arrived since the handler was installed: at a point where stopping is safe,
    for a SIGTERM whose own exception was lost (``install_termination_handler``)."""
    if _termination.received:
        raise _new_termination()
