"""Whether an MLflow store can be used, asked before any work: a server that does not answer, or a store that
cannot be written (full, read-only), is one line naming it, not MLflow's retries and traceback. And how every
request to it runs: whole under a SIGTERM (``StoreClient``), a refused write as one line (``store_call``)."""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow server that does not answer is one line within seconds, before any work (MLflow's own client
    retries for minutes and then raises a traceback). Local stores (sqlite, file) need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from flywheel.errors import InputError, one_line

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy or an older server without /health): the client will say more
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(uri, f"MLflow does not answer within {timeout_s:g} s ({one_line(reason)}); start it, "
                         "fix tracking.uri, or run with --no-track", field="tracking.uri") from None


def check_writable(uri: str, *, artifacts: str | None = None) -> None:
    """A local store that cannot be written is one line before any work, naming the path: MLflow retries a sqlite
    file it cannot open for two minutes and then raises a traceback, and a read-only file store fails in the middle
    of the loop. Checks the sqlite file and its directory (sqlite writes a journal beside the file), or the file
    store's directory, and ``artifacts`` (an experiment's artifact location) where it is a local directory; a
    missing directory is made. Remote stores: nothing to check here."""
    from flywheel.errors import InputError

    targets = []
    if sqlite_file(uri) is not None:
        targets.append(("sqlite file", sqlite_file(uri), True))
    elif local_dir(uri) is not None:
        targets.append(("file store", local_dir(uri), False))
    if artifacts and local_dir(artifacts) is not None:
        targets.append(("artifact directory", local_dir(artifacts), False))
    for what, path, is_file in targets:
        error = _write_error(path, is_file=is_file)
        if error is not None:
            remedy = "free space there" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
            raise InputError(uri, f"cannot write the MLflow {what} {path} ({error.strerror or error}): {remedy}, "
                             "point tracking.uri elsewhere, or run with --no-track", field="tracking.uri")


def _write_error(path: Path, *, is_file: bool) -> OSError | None:
    """Why ``path`` (a file, or a directory) cannot be written, or None: a real write, since permission bits do
    not stop root and only a write finds a read-only mount or a full disk."""
    directory = path.parent if is_file else path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if is_file and path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        with tempfile.TemporaryFile(dir=directory) as probe:  # unnamed where the OS allows: nothing left behind
            probe.write(bytes(4096))
            probe.flush()
    except OSError as error:
        return error
    return None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (relative to the working directory; ``sqlite:////abs``)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def local_dir(uri: str) -> Path | None:
    """The directory of a local file store or artifact location (``file:///x``, ``file:x`` or a plain path)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" and uri and uri != "databricks" else None


# What a store that refuses a write says: an OSError's errno, or the text MLflow and sqlite wrap it in.
_FULL = ((errno.ENOSPC, errno.EDQUOT), ("no space left", "disk is full", "quota exceeded"))
_READ_ONLY = ((errno.EROFS, errno.EACCES, errno.EPERM), ("read-only file system", "readonly database",
                                                          "permission denied"))


def store_fault(uri: str, error: BaseException):
    """The one-line ``InputError`` for a store that refused a write (full, read-only, not permitted), found in
    ``error`` or what caused it (MLflow wraps the OSError or sqlite's error in its own); None for any other error.
    A store of MLflow 3 that no longer writes file stores unless asked is one line too."""
    from flywheel.errors import InputError, chain

    kind, path = None, None
    for link in chain(error):
        text = str(link).lower()
        code = link.errno if isinstance(link, OSError) else None
        for name, (codes, words) in (("full", _FULL), ("read-only", _READ_ONLY)):
            if kind is None and (code in codes or any(word in text for word in words)):
                kind = name
        if "mlflow_allow_file_store" in text:
            return InputError(uri, "MLflow 3 writes a file store only with MLFLOW_ALLOW_FILE_STORE=true set; use "
                              "sqlite:///<dir>/mlflow.db instead, or set it", field="tracking.uri")
        if isinstance(link, OSError):  # a copy's error names its source first, the destination second
            path = path or link.filename2 or link.filename
    if kind is None:
        return None
    where = path or sqlite_file(uri) or local_dir(uri) or "its store"
    if kind == "full":
        return InputError(uri, f"MLflow could not write {where}: the disk is full; free space there and run again "
                          "(flywheel run --resume), or run with --no-track", field="tracking.uri")
    return InputError(uri, f"MLflow could not write {where}: it is read-only or not permitted; make it writable or "
                      "point tracking.uri elsewhere, or run with --no-track", field="tracking.uri")


def store_call(method):
    """A store that refuses a write (full, read-only) while ``method`` runs is one line naming the tracking URI and
    the path, not MLflow's traceback (``store_fault``); every other error stays as it is."""
    from flywheel.errors import InputError

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except InputError:
            raise
        except Exception as error:
            fault = store_fault(self.config.uri, error)
            if fault is None:
                raise
        # Raised here, outside the except: no chained context, so the run directory's disk-full rule
        # (run_state.disk_full_is_one_line) does not take the store's disk for the run's.
        raise fault

    return call


class StoreClient:
    """The MLflow client, with each store request whole: a SIGTERM during one is raised when it returns
    (``run_state.termination_deferred``). Artifact transfers, which can take minutes and leave nothing half-done
    in the store's database, can still be cut."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        from flywheel.termination import termination_deferred

        value = getattr(self._client, name)
        if not callable(value) or "artifact" in name:
            return value

        @functools.wraps(value)
        def call(*args, **kwargs):
            with termination_deferred():
                return value(*args, **kwargs)

        return call
