"""Methods the efficacy benchmark has not shown to help (bench/efficacy.py, docs/experiments.md), kept apart from
the core as TRL keeps its incubating trainers: they run when a config turns them on, with a one-line warning.

- ``step_search``: ``generate.search: step_beam``, the samples grown a step at a time (7 digits over 3 seeds:
  20±3% against 18±4% for its baseline, at 7.8x the tokens);
- ``process_rewards``: ``curate.step_rollouts``, rows dropped by their weakest step (76±24% against the default's
  85±19%).

A method moves into ``flywheel.stages`` once the benchmark shows it helping over seeds.
"""

from __future__ import annotations

import logging

log = logging.getLogger("flywheel")
_warned: set[str] = set()


def warn_experimental(setting: str, module: str) -> None:
    """One line, once per process, when a config turns on an experimental method."""
    if setting in _warned:
        return
    _warned.add(setting)
    log.warning("%s is experimental (flywheel.experimental.%s): the efficacy benchmark has not shown it to help "
                "(docs/experiments.md)", setting, module)
