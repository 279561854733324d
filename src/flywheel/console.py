"""What a command prints besides its result: the ``flywheel`` logger's headings on stderr, and the libraries kept
to their warnings (no dicts of every logged step, no download bars)."""

from __future__ import annotations

import os
import sys


def setup_logging(verbose: int, quiet: int) -> int:
    """The ``flywheel`` logger on stderr: INFO (a heading per round and stage) by default, DEBUG with -v,
    WARNING with -q. Returns the level; the libraries stay at WARNING unless -vv."""
    import logging

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("flywheel")
    logger.setLevel(level)
    if not any(getattr(h, "flywheel", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.flywheel = True
        logger.addHandler(handler)
    logger.propagate = False
    return level


def quiet_libraries(models: bool = True) -> None:
    """Keep the output to our own progress bars and tables. ``models``: also transformers and datasets (imported
    here only for the stages that load a model)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside TRL/transformers
    # MLflow sets up its own loggers when it is imported, at this level: "Creating initial MLflow database
    # tables..." stays out. Not importing it here keeps the stages that never log (2.5 s per process) fast.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if not models:
        return
    # datasets reads this when train imports it: importing it here would cost every generate and evaluate process
    # 0.8 s for a library only training uses.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
