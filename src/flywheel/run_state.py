"""A run directory's state: who holds it, which config made it, which stages are complete.

``flywheel run`` writes under ``loop.out_dir``:
  config.yaml            the resolved config of the run (``flywheel report``/``status`` read it)
  state/inputs.json      digests of what the run read from outside the directory (seed, data files)
  state/<r>/<stage>.json one record per completed stage: the md5 of each of its outputs, its seconds
  .flywheel.lock         the PID and host of the process that holds the directory (while it runs)

Resume (``flywheel run --resume``) replays the records in loop order: a stage whose record
exists and whose outputs still have the recorded digests is skipped; the first stage that is
not complete runs, and so does every stage after it (they read what it writes). Every output
is published atomically and recorded only after, so a stage killed at any point is either
complete or runs again. Together with an unchanged config and unchanged outside inputs this
is DVC's run-cache rule for a linear pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flywheel import faults, io
from flywheel.errors import InputError
from flywheel.layout import RunLayout

log = logging.getLogger("flywheel")

RUN_CONFIG = RunLayout(Path(".")).config.name  # config.yaml
STATE_DIR = "state"
LOCK_FILE = ".flywheel.lock"
# Keys a resumed run may change: how many rounds to run and how the console looks, never a result.
RESUMABLE_KEYS = ("loop.rounds", "loop.progress")
# The stages of a round in loop order (``flywheel run`` adds "track" after them when MLflow is on).
ROUND_STAGES = ("prompts", "generate", "vote", "curate", "train", "evaluate", "gate")
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


# --- the lock ------------------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json_or_none(path: Path):
    """A JSON file's content, or None if it is absent or half-written (the lock file while its holder writes)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_stale(holder: dict) -> bool:
    """A lock from this host whose process is gone (killed); another host's PID cannot be checked."""
    return holder.get("host") == socket.gethostname() and not alive(int(holder.get("pid", -1)))


class RunLock:
    """Exclusive hold on a run directory: a second ``flywheel run`` into it fails in one line.

    The lock file names the holder's PID and host. A lock whose PID is gone on this host is
    stale (the holder was killed) and is taken over; a lock from another host is respected,
    since its PID cannot be checked from here (delete the file if that host is gone).
    """

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_json_or_none(self.path)
                if holder and is_stale(holder):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if holder is None:  # being written by its holder right now, or truncated: wait for it
                    time.sleep(0.2)
                    continue
                raise InputError(self.path.parent, f"another flywheel run holds this directory (pid "
                                 f"{holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); wait "
                                 f"for it, or delete {self.path} if that process is gone", field="loop.out_dir")
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise InputError(self.path, "could not take the run directory's lock", field="loop.out_dir")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


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
    from flywheel.modeling import resolve_model

    inputs = {"seed.path": path_md5(resolve_model(config.seed.path))}
    for key in ("prompts", "eval"):
        value = getattr(config.data, key)
        if value:
            inputs[f"data.{key}"] = path_md5(Path(value))
    return inputs


def changed_inputs(root: Path, inputs: dict[str, str | None]) -> list[str]:
    """Keys of ``inputs`` (``outside_inputs``) whose digests differ from those the run in ``root`` started with;
    every key where it recorded none."""
    path = Path(root) / STATE_DIR / "inputs.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return sorted(key for key in set(saved) | set(inputs) if saved.get(key) != inputs.get(key))


def read_run_config(root: Path):
    """The config a run directory was made with (its ``config.yaml``), or None if it has none."""
    from flywheel.config import load_config

    path = Path(root) / RUN_CONFIG
    return load_config(path) if path.is_file() else None


def holds_a_run(root: Path) -> bool:
    root = Path(root)
    return (root / RUN_CONFIG).is_file() or RunLayout(root).rounds_dir.is_dir()


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove what killed writes left (``.name.XXXX.tmp``, ``.name.old``); only safe while holding the lock."""
    removed = []
    for path in sorted(Path(root).rglob(".*"), key=lambda p: len(p.parts)):
        if path.name.endswith((".tmp", ".old")) and path.exists():  # rglob(".*"): hidden names only
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def open_run(root: Path, config, mode: str) -> "Ledger":
    """Start, restart or resume the run in ``root``; returns its stage ledger. Call with the lock held,
    after every input check (nothing is deleted before the inputs are known to be good).

    new      refuses a directory that already holds a run (one line: --resume or --restart)
    restart  deletes the earlier run's results, then starts
    resume   refuses a changed config or changed outside inputs, naming the keys
    """
    from flywheel.config import dump_config, to_dict

    if mode not in MODES:
        raise ValueError(mode)
    root = Path(root)
    state = root / STATE_DIR
    inputs = outside_inputs(config)
    if mode == "new" and holds_a_run(root):
        raise InputError(root, "holds an earlier run; pass --resume to continue it or --restart to start over",
                         field="loop.out_dir")
    if mode == "resume":
        saved = read_run_config(root)
        if saved is None:
            raise InputError(root / RUN_CONFIG, "no run to resume here (start one without --resume)",
                             field="loop.out_dir")
        changed = changed_keys(to_dict(saved), to_dict(config))
        changed += [f"{key} (its contents)" for key in changed_inputs(root, inputs) if key not in changed]
        if changed:
            raise InputError(root / RUN_CONFIG, f"the config changed since the run started ({', '.join(changed)}); "
                             "resume with the same config, or --restart to start over", field="--resume")
        remove_stale_temporaries(root)
    else:
        for target in [*RunLayout(root).outputs(), root / STATE_DIR, root / RUN_CONFIG]:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        remove_stale_temporaries(root)
    io.write_text(root / RUN_CONFIG, dump_config(config))
    io.write_json(state / "inputs.json", inputs)
    return Ledger(state, replay=mode == "resume")


# --- the stage ledger ----------------------------------------------------------------------------------------

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
        return json.loads(path.read_text()) if path.is_file() else None

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
            recorded = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted(folder.glob("*.json"))}
        return {**recorded, **{stage: s for (r, stage), s in self.ran.items() if r == round_index}}


def install_termination_handler() -> None:
    """SIGTERM (a pod being stopped, ``kill``) unwinds like Ctrl-C, so runs end as KILLED, not RUNNING."""
    from flywheel.errors import Terminated

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
