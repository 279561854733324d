"""Fault injection for the kill-and-resume tests: the process SIGKILLs itself at a named point.

``FLYWHEEL_KILL_AT=<round>:<stage>:<point>`` (unset in normal use, and then every call here is a
no-op). Points, in the order a stage meets them:
  begin    the stage starts, nothing written yet
  publish  the stage's first output is written to its temporary name, not yet renamed into place
           (what a kill in the middle of a stage leaves: a ``.name.XXXX.tmp`` beside old outputs)
  end      every output is published, the stage's completion record is not written yet
SIGKILL is what a lost node or the OOM killer does: no handler runs, no ``finally``. A fourth field
picks another fault: ``TERM`` (SIGTERM, a pod being stopped), ``INT`` (SIGINT, Ctrl-C) or ``ERROR``
(a RuntimeError, a bug in a stage), e.g. ``FLYWHEEL_KILL_AT=1:train:begin:TERM``.
"""

from __future__ import annotations

import os
import signal

ENV = "FLYWHEEL_KILL_AT"
_current: tuple[int, str] | None = None


def enter(round_index: int, stage: str) -> None:
    global _current
    _current = (round_index, stage)


def leave() -> None:
    global _current
    _current = None


def point(name: str) -> None:
    """Die here if ``FLYWHEEL_KILL_AT`` names the current stage and this point."""
    target = os.environ.get(ENV)
    if not target or _current is None:
        return
    where, _, fault = target.partition(f"{_current[0]}:{_current[1]}:{name}")
    if where or fault not in ("", ":TERM", ":INT", ":ERROR"):
        return
    if fault == ":ERROR":
        raise RuntimeError(f"injected fault at {target}")
    os.kill(os.getpid(), {"": signal.SIGKILL, ":TERM": signal.SIGTERM, ":INT": signal.SIGINT}[fault])
