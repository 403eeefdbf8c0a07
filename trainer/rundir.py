"""The run-directory format: the one module that writes it and reads it.

Layout (see docs/format.md for the full description)::

    ROOT/                       a root holds experiments
      EXPERIMENT/               an experiment holds runs (one per seed or config)
        RUN/
          meta.json             metadata, replaced atomically on every change
          metrics.jsonl         one JSON object per checkpoint, appended
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
* nothing here unpickles: metrics are JSON, arrays are ``.npz`` read with
  ``allow_pickle=False``;
* names of experiments and runs are checked, and every path is resolved and
  must stay inside the root, so ``..``, absolute paths and symlinks that lead
  outside are refused; the files of a run are never read or written through a
  symlink at all (:func:`read_regular_file`);
* a reader never raises for bad data in one run when asked about many:
  ``summarize_run`` reports the run as ``broken`` with the reason.

This module must not import torch: the dashboard and the analysis use it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import stat
import sys
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if path.is_symlink():
            raise UnsafePathError(f"{path.name} is a symlink: refused") from None
        raise RunDirError(f"cannot read {path.name} ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path.name} is not a regular file: refused")
        return handle.read()


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


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Read the completed checkpoints of a run as a DataFrame.

    Columns: ``epoch``, ``step``, then metric columns in order of first
    appearance; missing and non-numeric values are NaN. Text after the last
    newline (a row being written, or left half-written by a killed writer) is
    ignored. A complete line that is not a JSON object with integer ``epoch``
    and ``step`` raises RunDirError naming the line.
    """
    rows = _rows(Path(path))
    frame = pd.DataFrame.from_records(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(INDEX_COLUMNS))
    for key in INDEX_COLUMNS:
        frame[key] = frame[key].astype("int64")
    others = [c for c in frame.columns if c not in INDEX_COLUMNS]
    numeric = {}
    for column in others:
        values = frame[column]
        # numbers-only columns are int or float already; anything mixed (strings,
        # booleans, lists, objects, integers beyond int64) goes value by value
        numeric[column] = (
            values if values.dtype.kind in "iuf" else values.map(_number).astype(float)
        )
    return pd.concat([frame[list(INDEX_COLUMNS)], pd.DataFrame(numeric, index=frame.index)], axis=1)


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
    """A run's listing entry, without parsing every checkpoint; never raises.

    A listing of hundreds of long runs must stay fast, so every line is only
    checked to be one JSON object (``{...}``), and only the last lines are
    parsed. :func:`read_metrics` (used by :func:`load_run`) parses everything
    and reports any other damage, naming the line.
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
    lines = _complete_lines(path)
    for number, line in enumerate(lines, start=1):
        if not (line.lstrip().startswith(b"{") and line.rstrip().endswith(b"}")):
            raise RunDirError(f"{METRICS_FILE} line {number} is not valid JSON")
    last_row = _parse_row(lines[-1], len(lines)) if lines else None
    status, reason = effective_status(meta)
    last_eval = None
    # The last row usually has it; looking further back is bounded so a run
    # that logs no eval accuracy is not parsed whole.
    for number in range(len(lines), max(len(lines) - 100, 0), -1):
        value = _parse_row(lines[number - 1], number).get("eval_acc")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            last_eval = _number(value)
            break
    return RunSummary(
        experiment=experiment,
        run=path.name,
        path=path,
        status=status,
        reason=reason,
        task=meta.get("task"),
        seed=meta.get("seed"),
        checkpoints=len(lines),
        last_epoch=last_row["epoch"] if last_row else None,
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


def load_run(root: str | os.PathLike, experiment: str, run: str) -> Run:
    """Load one run; raise RunDirError (with the reason) if it is broken."""
    path = run_path(root, experiment, run)
    try:
        meta = read_meta(path)
        metrics = read_metrics(path)
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
