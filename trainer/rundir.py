"""The run-directory format: the one module that writes it and reads it.

Layout (see docs/format.md for the full description)::

    ROOT/                       a root holds experiments
      EXPERIMENT/               an experiment holds runs (one per seed or config)
        RUN/
          meta.json             metadata, replaced atomically on every change
          metrics.jsonl         one JSON object per checkpoint, appended
          metrics.cache         its rows as columns, kept up to date by readers (derived)
          state/arrays.npz      resume state: arrays and their epoch/step in one file (no pickle)
        .fits/                  analysis results (owned by analysis.store)

Guarantees the rest of trainmap relies on:

* a checkpoint row is written with a single ``write`` on an append-only file
  descriptor and ends with a newline, so a killed writer leaves at most one
  half line at the end; readers ignore text after the last newline, so they
  always see a consistent prefix, even while a run is being written;
* ``meta.json`` and the resume state are written to a temporary file and
  renamed, so they are either the old or the new version, never half; the
  resume state is one file, so its arrays and its epoch cannot disagree;
* nothing here unpickles: metrics are JSON, their cache raw int64/float64
  columns, arrays are ``.npz`` read with ``allow_pickle=False``;
* the metrics cache is never served stale: it is used only while the bytes of
  metrics.jsonl it covers are unchanged, and rebuilt otherwise;
* names of experiments and runs are checked, and every path is resolved and
  must stay inside the root, so ``..``, absolute paths and symlinks that lead
  outside are refused; the files of a run are never read or written through a
  symlink at all (:func:`read_regular_file`);
* a reader never raises for bad data in one run when asked about many:
  ``summarize_run`` reports the run as ``broken`` with the reason.

This module must not import torch: the dashboard and the analysis use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import operator
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainmap.trainer.columns import INDEX_COLUMNS
from trainmap.trainer.errors import UserError

FORMAT_VERSION = 1
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"
STATE_ARRAYS = "arrays.npz"
STATE_INFO = "state.json"

STATUSES = ("running", "completed", "failed", "interrupted", "diverged")
BROKEN = "broken"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,127}$")


class RunDirError(UserError, ValueError):
    """A run directory (or a name or path for one) is not usable; the message says why."""


class UnsafePathError(RunDirError):
    """A name or path would lead outside the root."""


# --------------------------------------------------------------------- paths


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe single path component, else raise UnsafePathError."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name in {".", ".."}:
        raise UnsafePathError(
            f"invalid {what} {name!r}: use letters, digits and _ . = + - "
            "(not starting with '.' or '-', no '/', at most 128 characters)"
        )
    return name


def resolve_inside(root: str | os.PathLike, *names: str) -> Path:
    """Join checked ``names`` onto ``root`` and refuse any result outside the root.

    Symlinks are resolved first, so a link inside the root that points elsewhere
    is refused too.
    """
    root_path = Path(root).resolve()
    path = root_path
    for name in names:
        path = path / check_name(name)
    resolved = path.resolve()
    if resolved != root_path and root_path not in resolved.parents:
        raise UnsafePathError(f"{path} resolves to {resolved}, outside the root {root_path}")
    return resolved


def experiment_path(root: str | os.PathLike, experiment: str) -> Path:
    return resolve_inside(root, experiment)


def run_path(root: str | os.PathLike, experiment: str, run: str) -> Path:
    return resolve_inside(root, experiment, run)


# ------------------------------------------------------------ small helpers


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    # the thread in the name too: the dashboard's threads may save one run's cache at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_value(value: Any) -> Any:
    """Turn a metric value into plain JSON: numbers, strings, bools or null for non-finite."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(value)  # numpy scalars, 0-d arrays and 0-d tensors all support float()
    return number if math.isfinite(number) else None


def _label(path: Path) -> str:
    """``EXPERIMENT/RUN`` of a run directory, to name the run in messages."""
    return f"{path.parent.name}/{path.name}"


def _exists_no_follow(path: Path) -> bool:
    return os.path.lexists(path)


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, which must be a regular file and not a symlink.

    Files inside a run directory or a saved fit are never followed through a
    symlink, even one that points inside the root: a link is refused, so no
    file outside the root can be read (or shown by the dashboard) through one.
    O_NONBLOCK keeps a FIFO planted in place of a file from blocking the reader.
    """
    with os.fdopen(_open_regular(path), "rb") as handle:
        return handle.read()


def _open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of ``path``, which must be a regular file and not a symlink."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if path.is_symlink():
            raise UnsafePathError(f"{path.name} is a symlink: refused") from None
        raise RunDirError(f"cannot read {path.name} ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path.name} is not a regular file: refused")
    return fd


_read_file = read_regular_file


def _is_int64(value: Any) -> bool:
    """A JSON integer (not a bool) that fits numpy's int64."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in ("trainmap", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------ writing


class RunWriter:
    """Appends checkpoints to one run directory and keeps its metadata current.

    Create a new run with :meth:`create`, reopen an interrupted one with
    :meth:`reopen`. Use it as a context manager: leaving the block normally marks
    the run completed (unless it diverged), an exception marks it failed and
    Ctrl-C marks it interrupted; every completed checkpoint stays readable.
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        # O_NOFOLLOW: never append through a symlink planted in place of the file
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd = os.open(self.path / METRICS_FILE, flags, 0o644)
        except OSError as error:
            raise RunDirError(
                f"cannot write {self.path / METRICS_FILE} ({error.strerror})"
            ) from None

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        experiment: str,
        run: str,
        *,
        task: str,
        seed: int | None = None,
        config: Mapping[str, Any] | None = None,
        hook_points: Iterable[str] = (),
        overwrite: bool = False,
    ) -> RunWriter:
        path = run_path(root, experiment, run)
        if (path / META_FILE).exists() and not overwrite:
            raise RunDirError(f"run {experiment}/{run} already exists at {path} (use resume)")
        path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in (METRICS_FILE, META_FILE):
                (path / name).unlink(missing_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "experiment": experiment,
            "run": run,
            "task": task,
            "seed": seed,
            "config": json.loads(json.dumps(dict(config or {}), default=str)),
            "hook_points": list(hook_points),
            "versions": _versions(),
            "status": "running",
            "started_at": _now(),
            "ended_at": None,
            "last_checkpoint": None,
            "diverged_at_epoch": None,
            "error": None,
            "writer": {"host": socket.gethostname(), "pid": os.getpid()},
        }
        writer = cls(path, meta)
        writer._save_meta()
        return writer

    @classmethod
    def reopen(cls, path: str | os.PathLike, *, keep_through_step: int | None = None) -> RunWriter:
        """Continue writing an existing run (for ``--resume``).

        A half line left by a killed writer is cut off; with ``keep_through_step``,
        rows after that step (written after the last saved resume state) are
        dropped so the resumed run does not repeat them.
        """
        path = Path(path)
        meta = read_meta(path)
        metrics_file = path / METRICS_FILE
        if _exists_no_follow(metrics_file):
            data = _read_file(metrics_file)
            kept = data[: data.rfind(b"\n") + 1]
            if keep_through_step is not None:
                lines = kept.splitlines(keepends=True)
                kept = b"".join(
                    line
                    for number, line in enumerate(lines, start=1)
                    if not line.strip() or _parse_row(line, number)["step"] <= keep_through_step
                )
            if kept != data:
                _write_atomic(metrics_file, kept)
        meta.update(
            status="running",
            ended_at=None,
            error=None,
            writer={"host": socket.gethostname(), "pid": os.getpid()},
        )
        writer = cls(path, meta)
        last = writer._last_row()
        meta["last_checkpoint"] = (
            {"epoch": last["epoch"], "step": last["step"]} if last is not None else None
        )
        writer._save_meta()
        return writer

    def _last_row(self) -> dict | None:
        data = _read_file(self.path / METRICS_FILE)
        lines = [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]
        return _parse_row(lines[-1], len(lines)) if lines else None

    def _save_meta(self) -> None:
        self.meta["updated_at"] = _now()
        _write_atomic(self.path / META_FILE, json.dumps(self.meta, indent=2).encode())

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one checkpoint: ``epoch`` and ``step`` (ints) plus metric values.

        Non-finite values are stored as null and read back as NaN.
        """
        for key in INDEX_COLUMNS:
            if key not in row:
                raise RunDirError(f"a checkpoint row needs {key!r}; got columns {sorted(row)}")
        ordered = {key: int(row[key]) for key in INDEX_COLUMNS}
        ordered.update((str(k), _json_value(v)) for k, v in row.items() if k not in INDEX_COLUMNS)
        line = (json.dumps(ordered, allow_nan=False) + "\n").encode()
        os.write(self._fd, line)  # one write: a reader never sees half of it unless we are killed
        self.meta["last_checkpoint"] = {"epoch": ordered["epoch"], "step": ordered["step"]}
        self._save_meta()

    def append_frame(self, frame: pd.DataFrame) -> None:
        """Append many checkpoints at once (one row each), e.g. when importing runs.

        The lines are the same as :meth:`append` writes; they go out in one
        ``write`` and ``meta.json`` is updated once, which matters for large imports.
        """
        missing = [key for key in INDEX_COLUMNS if key not in frame.columns]
        if missing:
            raise RunDirError(f"checkpoint rows need {missing}; got columns {list(frame.columns)}")
        if frame.empty:
            return
        others = [c for c in frame.columns if c not in INDEX_COLUMNS]
        ordered = frame[list(INDEX_COLUMNS) + others].astype({k: "int64" for k in INDEX_COLUMNS})
        # to_json writes NaN as null; infinities must become NaN first to do the same.
        ordered = ordered.replace([np.inf, -np.inf], np.nan)
        text = ordered.to_json(orient="records", lines=True, double_precision=15)
        view = memoryview((text if text.endswith("\n") else text + "\n").encode())
        while view:  # a large write may be split by the OS
            view = view[os.write(self._fd, view) :]
        last = ordered.iloc[-1]
        self.meta["last_checkpoint"] = {"epoch": int(last["epoch"]), "step": int(last["step"])}
        self._save_meta()

    def mark_diverged(self, epoch: int) -> None:
        if self.meta.get("diverged_at_epoch") is None:
            self.meta["diverged_at_epoch"] = int(epoch)
            self._save_meta()

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        if status not in STATUSES:
            raise RunDirError(f"unknown status {status!r}; expected one of {STATUSES}")
        if status == "completed" and self.meta.get("diverged_at_epoch") is not None:
            status = "diverged"
        self.meta.update(status=status, ended_at=_now(), error=error)
        self._save_meta()
        self.close()
        # Bring the columnar cache up to date now, so the first look at a finished
        # run is fast; a damaged row (ours never are) is the reader's to report.
        if _CACHE_SETTINGS["enabled"]:
            with contextlib.suppress(RunDirError, OSError):
                _read_table(self.path, [])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        if exc_type is None:
            self.finish("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", error="interrupted by the user (Ctrl-C)")
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")


# ---------------------------------------------------------- resume state
# One file, one rename: the arrays and the JSON info (epoch, step, optimizer
# scalars) travel together in ``state/arrays.npz`` (the info as the uint8 array
# ``STATE_INFO_KEY``), so a kill at any moment leaves either the previous state or
# the new one, never new weights labelled with an old epoch.

STATE_INFO_KEY = "__trainmap_state__"


def save_state(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], info: Mapping) -> None:
    """Save resume state as plain arrays plus JSON in one file, atomically (never pickle)."""
    if STATE_INFO_KEY in arrays:
        raise RunDirError(f"{STATE_INFO_KEY!r} is reserved in a resume state")
    state_dir = Path(path) / STATE_DIR
    if state_dir.is_symlink():
        raise UnsafePathError(f"{state_dir} is a symlink: refused")
    state_dir.mkdir(exist_ok=True)
    payload = json.dumps({"info": dict(info), "arrays": sorted(arrays)}).encode()
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{k: np.asarray(v) for k, v in arrays.items()},
        **{STATE_INFO_KEY: np.frombuffer(payload, dtype=np.uint8)},
    )
    _write_atomic(state_dir / STATE_ARRAYS, buffer.getvalue())
    # state.json of the older two-file layout would now describe other arrays
    (state_dir / STATE_INFO).unlink(missing_ok=True)


def load_state(
    path: str | os.PathLike, *, check_metrics: bool = False
) -> tuple[dict[str, np.ndarray], dict] | None:
    """Return (arrays, info) saved by :func:`save_state`, or None if there is none.

    Anything unusable (a file that is not a readable npz, object arrays, which
    would need pickle, arrays that do not match their description, a symlink)
    raises RunDirError with a one-line reason. With ``check_metrics`` the state's
    ``epoch`` and ``step`` must also be a row of ``metrics.jsonl`` (the row is
    written before its state), so a state that does not belong to the run's
    metrics is refused rather than resumed from.
    """
    path = Path(path)
    state_dir = path / STATE_DIR
    arrays_file = state_dir / STATE_ARRAYS
    if not _exists_no_follow(arrays_file) and not _exists_no_follow(state_dir / STATE_INFO):
        return None
    where = f"resume state {_label(path)}/{STATE_DIR}"
    try:
        if state_dir.is_symlink():
            raise RunDirError("the state directory is a symlink: refused")
        with np.load(io.BytesIO(_read_file(arrays_file)), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        if STATE_INFO_KEY in arrays:
            payload = json.loads(arrays.pop(STATE_INFO_KEY).tobytes())
        else:  # the older layout: state.json beside arrays.npz, written after it
            info_file = state_dir / STATE_INFO
            if info_file.lstat().st_mtime_ns < arrays_file.lstat().st_mtime_ns:
                raise RunDirError(
                    f"{STATE_ARRAYS} is newer than {STATE_INFO} (a save was interrupted)"
                )
            payload = json.loads(_read_file(info_file))
        if not isinstance(payload, dict) or not isinstance(payload.get("info"), dict):
            raise RunDirError("its description is not a JSON object with 'info'")
        if sorted(arrays) != payload.get("arrays"):
            raise RunDirError("its arrays do not match their description (interrupted save)")
        info = payload["info"]
        for key in INDEX_COLUMNS:
            if key in info and not _is_int64(info[key]):
                raise RunDirError(f"its {key} is {info[key]!r}, not an integer")
    except RunDirError as error:
        raise RunDirError(f"{where} is unusable: {error}; remove {state_dir} to restart") from None
    except Exception as error:  # noqa: BLE001 - any damage to an untrusted file, in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirError(
            f"{where} is unreadable ({type(error).__name__}: {reason}); remove {state_dir} "
            "to restart the run"
        ) from None
    if check_metrics and all(key in info for key in INDEX_COLUMNS):
        rows = {(row["epoch"], row["step"]) for row in _rows(path)}
        if (info["epoch"], info["step"]) not in rows:
            raise RunDirError(
                f"{where} is at epoch {info['epoch']} step {info['step']}, which is not a "
                f"checkpoint in {METRICS_FILE}: it does not belong to this run's metrics; "
                f"remove {state_dir} to restart the run"
            )
    return arrays, info


# ------------------------------------------------------------------ reading
# Run directories may come from anyone (copied, synced, hand-edited): every
# value a reader uses is checked by type here, and every failure to parse
# becomes a RunDirError with the reason, so one bad run is "broken" and never
# takes down a listing, a fit or the dashboard.


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise RunDirError(f"{what} is nested too deeply to read") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"{what} is not valid JSON ({error})") from None
    except ValueError as error:  # e.g. an integer too long to convert
        raise RunDirError(f"{what} is not valid JSON ({error})") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional(kind):
    return lambda value: value is None or kind(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_checkpoint(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_int64(value.get(key)) for key in INDEX_COLUMNS)


def _is_writer(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _optional(_is_str)(value.get("host"))
        and _optional(_is_int64)(value.get("pid"))
    )


# meta.json fields a reader uses: (check, what it must be). Absent fields are
# fine (a user's own writer may leave them out); present ones must have the type.
META_FIELDS = {
    "experiment": (_is_str, "a string"),
    "run": (_is_str, "a string"),
    "task": (_optional(_is_str), "a string or null"),
    "seed": (_optional(_is_int64), "an integer (int64) or null"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "hook_points": (_is_str_list, "a list of strings"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
    "started_at": (_optional(_is_str), "a string or null"),
    "ended_at": (_optional(_is_str), "a string or null"),
    "updated_at": (_optional(_is_str), "a string or null"),
    "last_checkpoint": (_optional(_is_checkpoint), 'null or {"epoch": int, "step": int}'),
    "diverged_at_epoch": (_optional(_is_int64), "an integer (int64) or null"),
    "error": (_optional(_is_str), "a string or null"),
    "writer": (_optional(_is_writer), 'null or {"host": string, "pid": int}'),
}


def check_meta(meta: Any) -> dict[str, Any]:
    """Return ``meta`` if it is a usable version-1 metadata object, else raise RunDirError."""
    if not isinstance(meta, dict):
        raise RunDirError(f"{META_FILE} does not hold a JSON object")
    version = meta.get("format_version")
    if not _is_int64(version) or not 1 <= version <= FORMAT_VERSION:
        raise RunDirError(
            f"{META_FILE} has format_version {_short(version)}; this trainmap reads 1"
        )
    status = meta.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        raise RunDirError(f"{META_FILE} has unknown status {_short(status)}")
    for key, (check, expected) in META_FIELDS.items():
        if key in meta and not check(meta[key]):
            raise RunDirError(f"{META_FILE} field {key!r} is {_short(meta[key])}, not {expected}")
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``meta.json``; raise RunDirError with the reason if unusable."""
    meta_file = Path(path) / META_FILE
    if not _exists_no_follow(meta_file):
        raise RunDirError(f"no {META_FILE}: not a trainmap run")
    return check_meta(_loads(_read_file(meta_file), META_FILE))


def _parse_row(line: bytes, number: int) -> dict:
    row = _loads(line, f"{METRICS_FILE} line {number}")
    if not isinstance(row, dict) or any(key not in row for key in INDEX_COLUMNS):
        raise RunDirError(f"{METRICS_FILE} line {number} is not a checkpoint row")
    for key in INDEX_COLUMNS:
        if not _is_int64(row[key]):
            raise RunDirError(
                f"{METRICS_FILE} line {number}: {key} is {_short(row[key])}, not an integer (int64)"
            )
    return row


def _number(value: Any) -> float:
    """A metric value as a float: numbers as they are, anything else NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range
        return math.inf if value > 0 else -math.inf


def read_metrics(path: str | os.PathLike, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read the completed checkpoints of a run as a DataFrame.

    Columns: ``epoch``, ``step`` (int64), then metric columns in order of first
    appearance: int64 when every row has an integer that fits, else float64
    with NaN for missing and non-numeric values. With ``columns``, only those
    metric columns (the run's other columns are not read; names it does not
    have are left out). Text after the last newline (a row being written, or
    left half-written by a killed writer) is ignored. A complete line that is
    not a JSON object with integer ``epoch`` and ``step`` raises RunDirError
    naming the line.

    The rows come from the run's columnar cache (``metrics.cache``) where it
    still describes ``metrics.jsonl``; only rows appended since are parsed, and
    the cache is brought up to date (see "Columnar cache" below).
    """
    table = _read_table(Path(path), None if columns is None else list(columns))
    return pd.DataFrame(table.columns)


# ------------------------------------------------------------ columnar cache
# metrics.jsonl stays the crash-safe source of truth, but parsing it is slow: a
# run of 10 000 checkpoints takes a fraction of a second, an experiment of 400
# such runs minutes. So a reader keeps what it parsed in ``metrics.cache``
# beside it: one line of JSON describing it, then each column as raw
# little-endian int64 or float64 values, so one column is one read and nothing
# is ever unpickled (docs/format.md). The description says which bytes of
# metrics.jsonl the columns cover: their count, hashes of their first and last
# 16 KiB, and the file's size, mtime and inode when they were read. A reader
# uses the cache only while those bytes are unchanged and parses just the rows
# appended after them; a cache that is missing, corrupt, a symlink or describes
# other bytes is ignored and rebuilt. The cache is never trusted over the
# JSONL: a damaged line after the covered bytes is reported on every read, and
# the cache never covers it.
#
# Who writes it: any reader that parsed new rows, and the writer when a run
# ends. A reader that cannot write in the run directory (a read-only volume)
# writes to the spare folder the dashboard configures (``configure_metrics_cache``),
# else it keeps parsing: the cache only ever saves time.

METRICS_CACHE_FILE = "metrics.cache"
METRICS_CACHE_VERSION = 1
_CHECKED_BYTES = 16384
_CACHE_SETTINGS: dict[str, Any] = {"enabled": True, "spare_dir": None}


def configure_metrics_cache(
    *, enabled: bool = True, spare_dir: str | os.PathLike | None = None
) -> None:
    """Turn the columnar cache on or off, and say where it may go when a run directory is read-only.

    ``spare_dir`` must be a folder only this user can write (the dashboard
    passes one inside its own cache folder); caches there are named by a hash
    of the run's resolved path. Off, every read parses the whole JSONL (the
    benchmark's baseline).
    """
    _CACHE_SETTINGS.update(enabled=bool(enabled), spare_dir=Path(spare_dir) if spare_dir else None)


@dataclass
class _Table:
    """Columns of the complete, non-blank lines of metrics.jsonl in its first ``covered`` bytes."""

    columns: dict[str, np.ndarray]
    rows: int = 0
    lines: int = 0
    covered: int = 0

    @classmethod
    def empty(cls) -> _Table:
        return cls({key: np.empty(0, dtype=np.int64) for key in INDEX_COLUMNS})

    def select(self, wanted: list[str] | None) -> _Table:
        if wanted is None:
            return self
        keep = set(INDEX_COLUMNS) | set(wanted)
        return _Table({k: v for k, v in self.columns.items() if k in keep}, self.rows)


def _column(values: list) -> np.ndarray:
    """One column's values (None where a row has none) as int64 if all fit, else float64.

    As float64, numbers are kept (integers beyond float range are +-inf) and
    anything else (null, strings, booleans, lists, objects) is NaN.
    """
    kinds = set(map(type, values))
    if kinds == {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:  # beyond int64: a float column
            pass
    if kinds <= {int, float, type(None)}:
        try:  # numpy reads None as NaN; an integer beyond float range overflows
            return np.array(values, dtype=np.float64)
        except OverflowError:
            pass
    return np.array([_number(v) for v in values], dtype=np.float64)


def _columns_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Checked rows as columns: ``epoch``, ``step``, then others in order of first appearance."""
    names = list(rows[0])
    table = None
    if set(map(len, rows)) == {len(names)}:  # usually every row has the same columns
        try:
            table = dict(zip(names, zip(*map(operator.itemgetter(*names), rows))))
        except KeyError:
            pass
    if table is None:
        names = list(dict.fromkeys(key for row in rows for key in row))
        table = {name: [row.get(name) for row in rows] for name in names}
    order = [*INDEX_COLUMNS, *(name for name in names if name not in INDEX_COLUMNS)]
    return {name: _column(list(table[name])) for name in order}


def _append_table(base: _Table, new: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``base``'s columns followed by ``rows`` new rows, typed as if all were parsed at once."""
    merged = {}
    for name in [*base.columns, *(n for n in new if n not in base.columns)]:
        parts = [base.columns.get(name), new.get(name)]
        if base.rows == 0:
            parts[0] = np.empty(0, dtype=parts[1].dtype)  # no rows: nothing to be NaN
        if not all(p is not None and p.dtype == np.int64 for p in parts):
            parts = [
                np.full(size, math.nan) if part is None else part.astype(np.float64)
                for part, size in zip(parts, (base.rows, rows))
            ]
        merged[name] = np.concatenate(parts)
    return merged


def _parse_after(base: _Table, data: bytes) -> tuple[_Table, RunDirError | None]:
    """``base`` extended by the complete lines of ``data`` (bytes following its covered ones).

    Parsing stops at the first damaged line: the table covers the lines before
    it, and the error naming it is returned beside it.
    """
    complete = data[: data.rfind(b"\n") + 1]
    rows = _parse_quickly(complete)
    if rows is not None:
        offset, lines, error = len(complete), base.lines + len(rows), None
    else:  # some line is damaged: find it, line by line
        rows, offset, lines, error = [], 0, base.lines, None
        for line in complete.splitlines(keepends=True):
            if line.strip():
                try:
                    rows.append(_parse_row(line, lines + 1))
                except RunDirError as damage:
                    error = damage
                    break
                lines += 1
            offset += len(line)
    if not rows:
        return _Table(base.columns, base.rows, lines, base.covered + offset), error
    columns = _append_table(base, _columns_of(rows), len(rows))
    return _Table(columns, base.rows + len(rows), lines, base.covered + offset), error


_BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


def _parse_quickly(data: bytes) -> list[dict] | None:
    """The rows of ``data``'s non-blank lines if all are good, else None (ask :func:`_parse_row`).

    The same rows as :func:`_parse_row` line by line, in a third of the time:
    one decode for all lines, and any doubt (a carriage return, which also ends
    a line, bytes that are not UTF-8, a bad row) leaves the verdict to it.
    """
    if b"\r" in data:
        return None
    try:
        rows = [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip(_BLANK)]
    except (ValueError, RecursionError):
        return None
    for row in rows:
        if type(row) is not dict:
            return None
        for key in INDEX_COLUMNS:
            value = row.get(key)
            if type(value) is not int or not -(2**63) <= value < 2**63:
                return None
    return rows


def _digest(fd: int, start: int, end: int) -> str:
    return hashlib.blake2b(os.pread(fd, end - start, start), digest_size=16).hexdigest()


def _covered_digests(fd: int, covered: int) -> tuple[str, str]:
    """Hashes of the first and the last 16 KiB of the covered bytes."""
    window = min(covered, _CHECKED_BYTES)
    return _digest(fd, 0, window), _digest(fd, covered - window, covered)


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev]


def _cache_files(path: Path) -> list[Path]:
    """Where a run's cache may be: beside its metrics, then in the spare folder."""
    files = [path / METRICS_CACHE_FILE]
    spare = _CACHE_SETTINGS["spare_dir"]
    if spare is not None:
        name = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:32]
        files.append(spare / f"{name}.cache")
    return files


class _CorruptCache(Exception):
    """A cache file that cannot be used (it is then ignored and rebuilt)."""


def _is_count(value: Any) -> bool:
    return _is_int64(value) and value >= 0


class _Cache:
    """An open cache file whose description was read and checked (its columns are read on demand).

    The file: the line ``_CACHE_MAGIC``, one line of JSON describing it, then
    each column in turn as ``rows`` little-endian int64 or float64 values.
    """

    def __init__(self, file: Path, stack: contextlib.ExitStack):
        try:
            self.fd = _open_regular(file)
        except RunDirError as error:  # a symlink, a FIFO...: never read, replaced when saved
            raise _CorruptCache(str(error)) from None
        stack.callback(os.close, self.fd)
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, min(size, 1 << 16), 0)
        if not head.startswith(_CACHE_MAGIC):
            raise _CorruptCache(f"{file.name} is not a trainmap metrics cache")
        end = head.find(b"\n", len(_CACHE_MAGIC))
        if end < 0 and size > len(head):  # a long description (thousands of columns)
            head = os.pread(self.fd, size, 0)
            end = head.find(b"\n", len(_CACHE_MAGIC))
        try:
            info = json.loads(head[len(_CACHE_MAGIC) : end])
        except (ValueError, RecursionError):
            raise _CorruptCache(f"{file.name}: its description is not JSON") from None
        columns = info.get("columns") if isinstance(info, dict) else None
        if not (
            end > 0
            and isinstance(columns, list)
            and all(_is_column(c) for c in columns)
            and len({c[0] for c in columns}) == len(columns)
            and [c for c in columns[:2]] == [[k, "int64"] for k in INDEX_COLUMNS]
            and info.get("version") == METRICS_CACHE_VERSION
            and all(_is_count(info.get(k)) for k in ("covered", "rows", "lines"))
            and info["rows"] <= info["lines"]
            and all(isinstance(info.get(k), str) for k in ("head", "tail"))
            and (info.get("stat") is None or _is_int_list(info["stat"], 4))
            and size == end + 1 + 8 * info["rows"] * len(columns)
        ):
            raise _CorruptCache(f"{file.name}: not a description this trainmap wrote")
        self.file, self.info, self.start = file, info, end + 1

    def describes(self, fd: int, now: os.stat_result) -> bool:
        """Whether the covered bytes are still the first bytes of metrics.jsonl (open as ``fd``)."""
        covered, seen = self.info["covered"], self.info["stat"]
        if seen == _stat_key(now):
            return True  # not touched since it was read
        if now.st_size < covered or (seen is not None and now.st_size == seen[0]):
            return False  # truncated, or rewritten in place (appending makes it longer)
        return [self.info["head"], self.info["tail"]] == list(_covered_digests(fd, covered))

    def table(self, wanted: list[str] | None) -> _Table:
        rows = self.info["rows"]
        columns = {}
        for i, (name, kind) in enumerate(self.info["columns"]):
            if wanted is None or name in INDEX_COLUMNS or name in wanted:
                data = os.pread(self.fd, 8 * rows, self.start + 8 * rows * i)
                if len(data) != 8 * rows:  # the file was cut while being read
                    raise _CorruptCache(f"{self.file.name}: column {i} is cut short")
                columns[name] = np.frombuffer(data, dtype=_CACHE_DTYPES[kind]).astype(kind)
        return _Table(columns, rows, self.info["lines"], self.info["covered"])


_CACHE_MAGIC = b"trainmap metrics cache\n"
_CACHE_DTYPES = {"int64": "<i8", "float64": "<f8"}


def _is_column(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[1] in _CACHE_DTYPES
    )


def _is_int_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(map(_is_int64, value))


def _save_cache(path: Path, table: _Table, fd: int, stat_key: list[int] | None) -> None:
    """Write the cache (beside the metrics, else in the spare folder); never raises."""
    places = [
        file
        for file in _cache_files(path)
        if file.parent != path or os.access(path, os.W_OK)  # not in a read-only run directory
    ]
    if not places:
        return
    head, tail = _covered_digests(fd, table.covered)
    info = {
        "version": METRICS_CACHE_VERSION,
        "covered": table.covered,
        "rows": table.rows,
        "lines": table.lines,
        "columns": [[name, values.dtype.name] for name, values in table.columns.items()],
        "head": head,
        "tail": tail,
        "stat": stat_key,
    }
    parts = [_CACHE_MAGIC, json.dumps(info).encode(), b"\n"]
    parts += [
        values.astype(_CACHE_DTYPES[values.dtype.name]).tobytes()
        for values in table.columns.values()
    ]
    data = b"".join(parts)
    for file in places:
        try:
            if file.parent != path:
                file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # derived data: no fsync; a cache lost in a crash is rebuilt
            _write_atomic(file, data, sync=False)
            return
        except OSError:
            continue  # e.g. a full disk: try the next place


def _read_table(path: Path, wanted: list[str] | None) -> _Table:
    """The run's complete rows: from its cache plus the rows appended since, or parsed whole."""
    metrics_file = path / METRICS_FILE
    if not _exists_no_follow(metrics_file):
        raise RunDirError(f"no {METRICS_FILE}")
    with contextlib.ExitStack() as stack:
        fd = _open_regular(metrics_file)
        stack.callback(os.close, fd)
        now = os.fstat(fd)
        cache = _usable_cache(path, fd, now, stack) if _CACHE_SETTINGS["enabled"] else None
        start = cache.info["covered"] if cache else 0
        if cache and cache.info["stat"] == _stat_key(now):
            data = b""  # unchanged since the cache was written: nothing to read
        else:
            with os.fdopen(os.dup(fd), "rb") as handle:
                handle.seek(start)
                data = handle.read()
        if cache and b"\n" not in data:
            with contextlib.suppress(_CorruptCache):
                return cache.table(wanted)  # nothing new: only the wanted columns are read
        base = _Table.empty()
        if cache:
            try:
                base = cache.table(None)
            except _CorruptCache:  # an array is damaged: parse everything again
                start = 0
                data = _read_all(fd)
        table, error = _parse_after(base, data)
        if _CACHE_SETTINGS["enabled"] and (table.rows > base.rows or cache is None):
            after = os.fstat(fd)
            # the size, mtime and inode let the next reader skip the checks only if
            # nothing was appended while this one read
            exact = (
                after.st_size == start + len(data) and _stat_key(after)[1:] == _stat_key(now)[1:]
            )
            _save_cache(path, table, fd, _stat_key(after) if exact and error is None else None)
    if error is not None:
        raise error
    return table.select(wanted)


def _read_all(fd: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        return handle.read()


def _usable_cache(path: Path, fd: int, now: os.stat_result, stack) -> _Cache | None:
    """The cache that describes the metrics and covers the most of them, or None."""
    best = None
    for file in _cache_files(path):
        if not _exists_no_follow(file):
            continue
        try:
            cache = _Cache(file, stack)
        except _CorruptCache:
            continue
        if cache.describes(fd, now) and (
            best is None or cache.info["covered"] > best.info["covered"]
        ):
            best = cache
    return best


@dataclass(frozen=True)
class RunSummary:
    """What a listing needs to know about a run; never raises for bad data."""

    experiment: str
    run: str
    path: Path
    status: str
    reason: str | None = None
    task: str | None = None
    seed: int | None = None
    checkpoints: int = 0
    last_epoch: int | None = None
    last_eval_acc: float | None = None
    started_at: str | None = None
    ended_at: str | None = None
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def broken(self) -> bool:
        return self.status == BROKEN


def effective_status(meta: Mapping[str, Any]) -> tuple[str, str | None]:
    """The status to show, and why: a 'running' run whose writer is gone is interrupted."""
    status = meta["status"]
    writer = meta.get("writer") or {}
    if (
        status == "running"
        and writer.get("host") == socket.gethostname()
        and isinstance(writer.get("pid"), int)
        and not _pid_alive(writer["pid"])
    ):
        return "interrupted", f"writer process {writer['pid']} is gone"
    if status == "completed" and meta.get("diverged_at_epoch") is not None:
        return "diverged", f"non-finite weights at epoch {meta['diverged_at_epoch']}"
    if status == "diverged":
        return status, f"non-finite weights at epoch {meta.get('diverged_at_epoch')}"
    return status, meta.get("error")


def _complete_lines(path: Path) -> list[bytes]:
    """The complete (newline-terminated), non-blank lines of a run's metrics file."""
    metrics_file = path / METRICS_FILE
    if not _exists_no_follow(metrics_file):
        raise RunDirError(f"no {METRICS_FILE}")
    data = _read_file(metrics_file)
    return [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def _rows(path: Path) -> list[dict]:
    return [_parse_row(line, n) for n, line in enumerate(_complete_lines(path), start=1)]


def _unexpected(error: Exception) -> str:
    """The reason for a failure the checks above did not foresee (a bug, or a new kind of damage).

    Kept apart so tests can tell that it never happens for the damage they know.
    """
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{UNEXPECTED} ({type(error).__name__}: {text[:200]})"


UNEXPECTED = "unreadable for an unforeseen reason"


def summarize_run(path: str | os.PathLike, experiment: str | None = None) -> RunSummary:
    """A run's listing entry; never raises.

    Every line is checked (parsed once, then kept in the columnar cache), so a
    run that :func:`load_run` would refuse is listed as broken with the same
    reason. ``last_eval_acc`` is the last ``eval_acc`` that is a number.
    """
    path = Path(path)
    experiment = experiment or path.parent.name
    try:
        return _summarize(path, experiment)
    except (RunDirError, OSError) as error:
        return RunSummary(experiment, path.name, path, BROKEN, reason=str(error))
    except Exception as error:  # noqa: BLE001 - one run never takes down a listing
        return RunSummary(experiment, path.name, path, BROKEN, reason=_unexpected(error))


def _summarize(path: Path, experiment: str) -> RunSummary:
    meta = read_meta(path)
    table = _read_table(path, ["eval_acc"])
    status, reason = effective_status(meta)
    epochs = table.columns["epoch"]
    evals = table.columns.get("eval_acc", np.empty(0))
    known = np.flatnonzero(~np.isnan(evals.astype(np.float64)))
    last_eval = float(evals[known[-1]]) if len(known) else None
    return RunSummary(
        experiment=experiment,
        run=path.name,
        path=path,
        status=status,
        reason=reason,
        task=meta.get("task"),
        seed=meta.get("seed"),
        checkpoints=table.rows,
        last_epoch=int(epochs[-1]) if table.rows else None,
        last_eval_acc=last_eval,
        started_at=meta.get("started_at"),
        ended_at=meta.get("ended_at"),
        meta=meta,
    )


def list_experiments(root: str | os.PathLike) -> list[str]:
    """Names of the experiments under ``root`` (directories with a safe name)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise RunDirError(f"root {root_path} is not a directory")
    names = []
    for child in sorted(root_path.iterdir()):
        if child.is_dir() and _NAME_PATTERN.match(child.name):
            try:
                resolve_inside(root_path, child.name)
            except UnsafePathError:
                continue
            names.append(child.name)
    return names


def run_folder_names(root: str | os.PathLike, experiment: str) -> list[str]:
    """Names of an experiment's run folders, sorted (hidden ones such as ``.fits`` are not runs)."""
    exp_path = experiment_path(root, experiment)
    return [c.name for c in sorted(exp_path.iterdir()) if c.is_dir() and not c.name.startswith(".")]


def run_status(root: str | os.PathLike, experiment: str, run: str) -> str:
    """The status ``list_runs`` gives one run, without summarising the others."""
    try:
        path = resolve_inside(root, experiment, run)
    except UnsafePathError:
        return BROKEN
    return summarize_run(path, experiment).status


def list_runs(root: str | os.PathLike, experiment: str) -> list[RunSummary]:
    """Every run of an experiment, broken ones included (status 'broken', with the reason)."""
    exp_path = experiment_path(root, experiment)
    summaries = []
    for child in sorted(exp_path.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            path = resolve_inside(root, experiment, child.name)
        except UnsafePathError as error:
            summaries.append(RunSummary(experiment, child.name, child, BROKEN, reason=str(error)))
            continue
        summaries.append(summarize_run(path, experiment))
    return summaries


@dataclass(frozen=True)
class Run:
    """One readable run: its metadata and its metrics table."""

    experiment: str
    name: str
    path: Path
    meta: dict
    metrics: pd.DataFrame
    status: str


def load_run(
    root: str | os.PathLike, experiment: str, run: str, columns: Iterable[str] | None = None
) -> Run:
    """Load one run (only the metric ``columns`` if given, see :func:`read_metrics`).

    Raises RunDirError (with the reason) if it is broken.
    """
    path = run_path(root, experiment, run)
    try:
        meta = read_meta(path)
        metrics = read_metrics(path, columns)
    except RunDirError as error:
        raise type(error)(f"run {experiment}/{run}: {error}") from None
    except OSError as error:
        raise RunDirError(f"run {experiment}/{run}: cannot read it ({error})") from None
    status, _ = effective_status(meta)
    return Run(experiment, run, path, meta, metrics, status)


def load_experiment(root: str | os.PathLike, experiment: str) -> tuple[list[Run], list[RunSummary]]:
    """All readable runs of an experiment, sorted by name, and the broken ones separately."""
    runs, broken = [], []
    for summary in list_runs(root, experiment):
        if summary.broken:
            broken.append(summary)
            continue
        try:
            runs.append(load_run(root, experiment, summary.run))
        except RunDirError as error:  # damage only a full read finds, or changed meanwhile
            reason = str(error).removeprefix(f"run {experiment}/{summary.run}: ")
            broken.append(RunSummary(experiment, summary.run, summary.path, BROKEN, reason=reason))
        except Exception as error:  # noqa: BLE001 - one run never takes down a fit
            reason = _unexpected(error)
            broken.append(RunSummary(experiment, summary.run, summary.path, BROKEN, reason=reason))
    return runs, broken


def run_fingerprint(path: str | os.PathLike) -> str:
    """Changes whenever the run's metadata or metrics change (size and mtime of both).

    The files are not followed through symlinks (a symlink is refused when read).
    """
    parts = []
    for name in (META_FILE, METRICS_FILE):
        try:
            info = (Path(path) / name).lstat()
            parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:missing")
    return "|".join(parts)


def experiment_fingerprint(
    root: str | os.PathLike, experiment: str, ignore: Collection[str] = ()
) -> str:
    """A short hash over every run's fingerprint: equal iff no run changed.

    Runs named in ``ignore`` are left out, as if they did not exist.
    """
    import hashlib

    exp_path = experiment_path(root, experiment)
    digest = hashlib.sha256()
    for child in sorted(exp_path.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name not in ignore:
            digest.update(f"{child.name}={run_fingerprint(child)};".encode())
    return digest.hexdigest()[:16]
