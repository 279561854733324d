"""A run directory's state: who holds it, which config made it, which stages are complete.

``flywheel run`` writes under ``loop.out_dir``:
  config.yaml            the resolved config of the run (``flywheel report``/``status`` read it)
  state/inputs.json      digests of what the run read from outside the directory (seed, data files)
  state/<r>/<stage>.json one record per completed stage: the md5 of each of its outputs, its seconds
  .flywheel.lock         locked (flock) by the process that runs the loop; names its PID and host

Resume (``flywheel run --resume``) replays the records in loop order: a stage whose record
exists and whose outputs still have the recorded digests is skipped; the first stage that is
not complete runs, and so does every stage after it (they read what it writes). Every output
is published atomically and recorded only after, so a stage killed at any point is either
complete or runs again. Together with an unchanged config and unchanged outside inputs this
is DVC's run-cache rule for a linear pipeline.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from flywheel import faults, io
from flywheel.errors import InputError, chain
from flywheel.layout import RunLayout
from flywheel.run_lock import LOCK_FILE
from flywheel.termination import raise_if_terminated

log = logging.getLogger("flywheel")

RUN_CONFIG = RunLayout(Path(".")).config.name  # config.yaml
STATE_DIR = "state"
INPUTS_RECORD = "inputs.json"  # in state/: the first file a run writes, the mark of a directory that holds one
# Keys a resumed run may change: how many rounds to run, how the console looks and where the directory is now
# (a copied or moved run), never a result.
RESUMABLE_KEYS = ("loop.rounds", "loop.progress", "loop.out_dir")
MODES = ("new", "resume", "restart")


# --- digests -------------------------------------------------------------------------------------------------

def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_md5(path: Path) -> str | None:
    """md5 of a file, or of a directory's files (relative names and contents, in sorted order); None if absent.

    Hidden names (a killed write's ``.name.XXXX.tmp``) are not outputs and never enter the digest.
    """
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return None
    digest = hashlib.md5()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{file_md5(file)}\n".encode())
    return digest.hexdigest()


# --- the run directory and its lock -------------------------------------------------------------------------

def check_out_dir(out_dir: str) -> Path:
    """``loop.out_dir`` as a directory this user can write, or one line (blank, a file, under a file, read-only).

    A blank value is refused rather than read as the current directory: it is what an unset variable leaves
    (``-s loop.out_dir=$OUT``), and a run would land where the user never said. '.' says it on purpose.
    """
    if not str(out_dir).strip():
        raise InputError("loop.out_dir", "is empty; name the run directory (use '.' for the current directory)")
    return io.check_output(Path(out_dir), directory=True, flag="loop.out_dir")


@contextlib.contextmanager
def disk_full_is_one_line(root: Path) -> Iterator[None]:
    """A full disk (or quota) while the run writes is one line naming the run directory, not a library's
    traceback: every output is published atomically, so what is written stays good and --resume goes on.
    Libraries report it their own way (shutil.Error, safetensors' error), often with the errno only in the text."""
    try:
        yield
    except InputError:
        raise  # already one line, naming what it is about (a full MLflow store names the store)
    except Exception as error:
        reason = _disk_full(error)
        if reason is None:
            raise
        written = _filename(error)
        if written is not None and not Path(written).resolve().is_relative_to(Path(root).resolve()):
            raise InputError(written, f"{reason} (outside the run directory); free space there, then continue "
                             "with `flywheel run --resume`") from error
        raise InputError(root, f"{reason} while writing the run; free space there, then continue with "
                         "`flywheel run --resume`", field="loop.out_dir") from error


def _filename(error: BaseException | None) -> str | None:
    """The file an OSError in ``error``'s chain names, if any."""
    for link in chain(error):
        if isinstance(link, OSError) and link.filename:
            return str(link.filename)
    return None


def _disk_full(error: BaseException | None) -> str | None:
    """'no space left on device' or 'disk quota exceeded' if ``error`` (or what caused it) says so, else None."""
    for link in chain(error):
        for code in (errno.ENOSPC, errno.EDQUOT):
            if (isinstance(link, OSError) and link.errno == code) or os.strerror(code) in str(link):
                return os.strerror(code).lower()
    return None


# --- config and outside inputs -------------------------------------------------------------------------------

def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``RESUMABLE_KEYS`` aside)."""
    old, new = _flat(saved), _flat(current)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)


def outside_inputs(config) -> dict[str, str | None]:
    """Digests of what the run reads from outside its directory: the seed and the user's data files."""
    from flywheel.modeling import resolve_model, seed_location

    inputs = {"seed.path": path_md5(resolve_model(seed_location(config.seed.path)))}
    for key in ("prompts", "eval"):
        value = getattr(config.data, key)
        if value:
            inputs[f"data.{key}"] = path_md5(Path(value))
    return inputs


def read_inputs(root: Path) -> dict | None:
    """The outside inputs' digests a run in ``root`` started with (``state/inputs.json``), None if there is no
    such record; one line if it is not one (``open_run`` writes it: a JSON object with the seed's digest)."""
    path = Path(root) / STATE_DIR / INPUTS_RECORD
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, f"is not flywheel's record of the run's inputs ({error}); --restart starts over "
                         "after you remove it", field="loop.out_dir") from error
    if not isinstance(saved, dict) or "seed.path" not in saved:
        raise InputError(path, "is not flywheel's record of the run's inputs (no 'seed.path' digest); --restart "
                         "starts over after you remove it", field="loop.out_dir")
    return saved


def changed_inputs(root: Path, inputs: dict[str, str | None]) -> list[str]:
    """Keys of ``inputs`` (``outside_inputs``) whose digests differ from those the run in ``root`` started with;
    every key where it recorded none."""
    saved = read_inputs(root) or {}
    return sorted(key for key in set(saved) | set(inputs) if saved.get(key) != inputs.get(key))


def read_run_config(root: Path):
    """The config a run directory was made with (its ``config.yaml``), or None if it has none."""
    from flywheel.config import load_config

    path = Path(root) / RUN_CONFIG
    return load_config(path) if path.is_file() else None


def holds_a_run(root: Path) -> bool:
    """Whether ``root`` holds a run of ``flywheel run``: the inputs record that only ``open_run`` writes, first,
    is there and is one. A config.yaml or a rounds/ alone does not count: a user's own directory may hold those
    names, and --restart deletes what a run holds."""
    try:
        return read_inputs(root) is not None
    except InputError:
        return False


def is_empty(root: Path) -> bool:
    """No file under ``root`` but our lock (empty folders are nothing to lose, and a run killed at its first write
    leaves one); stops at the first file, since ``root`` may be a large directory given by mistake."""
    root = Path(root)
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        if any(name != LOCK_FILE or here != root for name in files):
            return False
        if any((here / name).is_symlink() for name in folders):
            return False
    return True


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove what killed writes left (``.name.XXXX.tmp``, ``.name.old``); only safe while holding the lock."""
    removed = []
    for path in sorted(Path(root).rglob(".*"), key=lambda p: len(p.parts)):
        if path.name.endswith((".tmp", ".old")) and path.exists():  # rglob(".*"): hidden names only
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def check_open(root: Path, mode: str) -> None:
    """The refusals of ``open_run`` for ``mode``, with nothing written: ``flywheel run`` asks before MLflow
    creates anything, and ``open_run`` again with the lock held (the directory may change in between)."""
    if mode not in MODES:
        raise ValueError(mode)
    root = Path(root)
    if mode == "resume":
        if read_inputs(root) is None:
            raise InputError(root, "no run to resume here (start one without --resume)", field="loop.out_dir")
        if read_run_config(root) is None:
            raise InputError(root / RUN_CONFIG, "no run to resume here: the run stopped before writing it; "
                             "--restart to start over", field="loop.out_dir")
    elif holds_a_run(root):
        if mode == "new":
            raise InputError(root, "holds an earlier run; pass --resume to continue it or --restart to start over",
                             field="loop.out_dir")
    elif root.exists() and not is_empty(root):
        raise InputError(root, f"holds files and is not a flywheel run (no {STATE_DIR}/{INPUTS_RECORD}); name a "
                         "new or empty directory", field="loop.out_dir")


def open_run(root: Path, config, mode: str) -> "Ledger":
    """Start, restart or resume the run in ``root``; returns its stage ledger. Call with the lock held,
    after every input check (nothing is deleted before the inputs are known to be good).

    new      refuses a directory that already holds a run (one line: --resume or --restart)
    restart  deletes the earlier run's results, then starts
    resume   refuses a changed config or changed outside inputs, naming the keys, and corrupt stage records
    new and restart refuse a directory that holds files but no run: only a run's own files are ever deleted.
    """
    from flywheel.config import config_file_text, to_dict

    check_open(root, mode)
    root = Path(root)
    state = root / STATE_DIR
    inputs = outside_inputs(config)
    if mode == "resume":
        saved = read_run_config(root)
        Ledger(state).check_records()
        changed = changed_keys(to_dict(saved), to_dict(config))
        changed += [f"{key} (its contents)" for key in changed_inputs(root, inputs) if key not in changed]
        if changed:
            raise InputError(root / RUN_CONFIG, f"the config changed since the run started ({', '.join(changed)}); "
                             "resume with the same config, or --restart to start over", field="--resume")
        remove_stale_temporaries(root)
    elif holds_a_run(root):
        for target in [*RunLayout(root).outputs(), root / STATE_DIR, root / RUN_CONFIG]:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        remove_stale_temporaries(root)
    io.write_json(state / INPUTS_RECORD, inputs)  # first: the mark that this directory holds a run
    io.write_text(root / RUN_CONFIG, config_file_text(config))
    return Ledger(state, replay=mode == "resume")


# --- the stage ledger ----------------------------------------------------------------------------------------

def read_record(path: Path) -> dict:
    """A stage's completion record (``Ledger.stage`` writes it), or one line naming it: the ledger cannot tell
    what a corrupt record vouched for, and guessing could skip a stage whose outputs are stale."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, f"is not a stage record ({error}); remove it to run that stage again, or "
                         "--restart to start over") from error
    if not (isinstance(record, dict) and isinstance(record.get("outputs"), dict)
            and isinstance(record.get("seconds"), (int, float))):
        raise InputError(path, "is not a stage record (it needs 'outputs' and 'seconds'); remove it to run that "
                         "stage again, or --restart to start over")
    return record


@dataclass
class Ledger:
    """Records of completed stages under ``state_dir``; ``state_dir=None`` runs every stage, records nothing."""

    state_dir: Path | None
    replay: bool = False  # resuming: skip complete stages until the first one that is not
    skipped: list[str] = field(default_factory=list)
    ran: dict[tuple[int, str], float] = field(default_factory=dict)  # seconds of the stages run by this process

    def _record_path(self, round_index: int, stage: str) -> Path:
        return Path(self.state_dir) / str(round_index) / f"{stage}.json"

    def record(self, round_index: int, stage: str) -> dict | None:
        if self.state_dir is None:
            return None
        path = self._record_path(round_index, stage)
        return read_record(path) if path.is_file() else None

    def check_records(self) -> None:
        """Every record is one (``read_record``): a corrupt one fails the resume now, before any stage runs."""
        for path in sorted(Path(self.state_dir).glob("*/*.json")):
            read_record(path)

    def _key(self, output: Path) -> str:
        """An output's name in a record: relative to the run directory, so a record survives a move."""
        return Path(os.path.relpath(output, Path(self.state_dir).parent)).as_posix()

    def is_complete(self, round_index: int, stage: str, outputs: list[Path]) -> bool:
        record = self.record(round_index, stage)
        if record is None:
            return False
        for output in outputs:
            now = path_md5(output)
            if now is None or record["outputs"].get(self._key(output)) != now:
                return False
        return True

    def stage(self, round_index: int, stage: str, outputs: list[Path], work: Callable[[], object]) -> bool:
        """Run ``work`` unless this is a replay and the stage is complete; returns whether it ran."""
        raise_if_terminated()  # a SIGTERM lost in a callback of the stage before stops the run here
        if self.replay and self.is_complete(round_index, stage, outputs):
            self.skipped.append(f"{round_index}:{stage}")
            log.info("== round %d: %s (complete, skipped)", round_index, stage)
            return False
        self.replay = False  # a stage runs: every later stage reads what it writes, so they run too
        log.info("== round %d: %s", round_index, stage)
        faults.enter(round_index, stage)
        try:
            faults.point("begin")
            start = time.perf_counter()
            work()
            seconds = time.perf_counter() - start
            faults.point("end")  # outputs published, record not yet written: the worst moment to die
        finally:
            faults.leave()
        self.ran[(round_index, stage)] = seconds
        log.debug("   round %d: %s took %.1f s", round_index, stage, seconds)
        if self.state_dir is not None:
            io.write_json(self._record_path(round_index, stage),
                          {"stage": stage, "round": round_index, "seconds": seconds,
                           "outputs": {self._key(p): path_md5(p) for p in outputs}})
        return True

    def seconds(self, round_index: int) -> dict[str, float]:
        """Wall-clock seconds of each recorded stage of a round (what timings.json and bench/ report)."""
        recorded = {}
        if self.state_dir is not None:
            folder = Path(self.state_dir) / str(round_index)
            recorded = {p.stem: read_record(p)["seconds"] for p in sorted(folder.glob("*.json"))}
        return {**recorded, **{stage: s for (r, stage), s in self.ran.items() if r == round_index}}
