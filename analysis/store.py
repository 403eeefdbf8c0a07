"""Saved fits: plain JSON + npz next to the experiment, never pickle.

Layout::

    ROOT/EXPERIMENT/.fits/<key>/
        fit.json      everything but the arrays (params, features, sweep table,
                      maps without their paths, excluded runs, scaling summary)
        models.npz    per feasible n: startprob, transmat, means, covars (canonical
                      state order), plus the scaling arrays
        paths.npz     every map's decoded paths and epochs (STORE_VERSION 3):
                      ``runs`` (names), ``offsets`` (run i is
                      ``[offsets[i], offsets[i+1])``), ``epochs`` (all runs
                      concatenated; they do not depend on n) and ``n<k>_paths``
                      per feasible n; a map whose runs or epochs differ from the
                      shared ones also has ``n<k>_runs``, ``n<k>_offsets`` and
                      ``n<k>_epochs``. Version 2 kept paths and epochs as JSON
                      lists in fit.json (tens of MB for 400 x 10000); such fits
                      are still read.
        bootstraps.json  bootstraps over runs computed after the fit (e.g. for
                      another n), keyed by criterion/n/how n was chosen; the
                      one computed with the fit is in fit.json
        names.json    optional: the names users gave states, {"<n>": {"<state>": name}}

``key`` hashes the experiment fingerprint (which changes whenever any run's
metadata or metrics change, see ``trainer.rundir.experiment_fingerprint``) and
the parameters that determine the fit, so asking again for the same fit finds
it, and a changed run makes a new key (the old fit is simply not found).
A run directory may come from someone else: loading uses ``json`` and
``np.load(..., allow_pickle=False)`` only, so a saved fit cannot run code. Nothing
under ``.fits`` is followed through a symlink (``.fits`` itself, a fit's folder or
its files): a link is skipped when listing, not found when loading, and refused
when saving, so no file outside the root is read or written through one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from trainmap.analysis.result import FitResult, RunArrays, TrainingMap

FITS_DIR = ".fits"
FIT_FILE = "fit.json"
SUMMARY_FILE = "summary.json"
ARRAYS_FILE = "models.npz"
PATHS_FILE = "paths.npz"
BOOTSTRAPS_FILE = "bootstraps.json"  # bootstraps added later, for other n (analysis.bootstrap)
NAMES_FILE = "names.json"
STORE_VERSION = 3  # 2: detour tests and the corrected regression; 3: paths in paths.npz
READABLE_VERSIONS = (2, 3)


def fits_dir(root, experiment) -> Path:
    from trainmap.trainer import rundir

    return rundir.experiment_path(root, experiment) / FITS_DIR


def fits_fingerprint(root, experiment) -> str:
    """Changes whenever a saved fit appears or changes (names, sizes and mtimes; nothing is read)."""
    base = fits_dir(root, experiment)
    digest = hashlib.sha256()
    if base.is_dir() and not base.is_symlink():  # a linked .fits is refused anyway
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                try:
                    stat = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _linked(path: Path) -> bool:
    """Whether ``path`` or its parent (the ``.fits`` folder) is a symlink."""
    return path.is_symlink() or path.parent.is_symlink()


def _read(path: Path) -> bytes:
    from trainmap.trainer import rundir

    return rundir.read_regular_file(path)  # refuses symlinks and non-regular files


def fit_key(runs_fingerprint: str, key_params: dict) -> str:
    """A short hash of the input runs' fingerprint and the fit-determining parameters."""
    text = json.dumps({"runs": runs_fingerprint, "params": key_params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    """Turn numpy scalars/arrays and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def save_fit(root, experiment, result: FitResult, models: dict[int, dict], extra: dict) -> Path:
    """Write ``result`` (and the canonical model arrays per n) atomically."""
    from trainmap.trainer import rundir

    base = fits_dir(root, experiment)
    if base.is_symlink() or (base / result.fingerprint).is_symlink():
        raise rundir.UnsafePathError(f"{base} or a fit in it is a symlink: refused")
    base.mkdir(exist_ok=True)
    final = base / result.fingerprint
    tmp = base / f".tmp-{result.fingerprint}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        payload = {
            "store_version": STORE_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "experiment": result.experiment,
            "fingerprint": result.fingerprint,
            "params": result.params,
            "feature_names": result.feature_names,
            "runs": result.runs,
            "excluded_runs": result.excluded_runs,
            "sweep": result.sweep.to_dict(orient="list"),
            "sweep_columns": list(result.sweep.columns),
            "selected_n": result.selected_n,
            "maps": {str(n): m.to_dict(with_paths=False) for n, m in result.maps.items()},
            "warnings": list(result.warnings),
            "selection": dict(result.selection),
            "bootstrap": result.bootstrap,
            **extra,
        }
        (tmp / FIT_FILE).write_text(json.dumps(_plain(payload), allow_nan=False))
        # A listing needs only these few fields; the full payload of a large
        # experiment is tens of MB of paths, too slow to parse just to list fits.
        (tmp / SUMMARY_FILE).write_text(json.dumps(_plain(_summary(payload)), allow_nan=False))
        arrays = {}
        for n, model in models.items():
            for name, value in model.items():
                arrays[f"n{n}_{name}"] = np.asarray(value, dtype=float)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (tmp / ARRAYS_FILE).write_bytes(buffer.getvalue())
        (tmp / PATHS_FILE).write_bytes(_paths_npz(result.maps))
        if final.exists():  # an identical fit saved meanwhile: keep one
            if os.path.lexists(final / NAMES_FILE):  # with the names users gave its states
                try:
                    (tmp / NAMES_FILE).write_bytes(_read(final / NAMES_FILE))
                except ValueError:  # a linked names file is not carried over
                    pass
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# Epochs are at least int32: an epoch in int16 would wrap at 32767 in arithmetic
# like ``epoch + elapsed`` (a state number is never added to like that).
EPOCH_TYPES = (np.int32,)


def _smallest_int(values: np.ndarray, types=(np.int8, np.int16, np.int32)) -> np.ndarray:
    """``values`` in the first of ``types`` that holds them, else int64 (states fit in int8)."""
    values = np.asarray(values, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    for dtype in types:
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def _paths_npz(maps: dict[int, TrainingMap]) -> bytes:
    """The bytes of paths.npz: every map's paths, the runs' layout and epochs once."""
    arrays: dict[str, np.ndarray] = {}
    shared: RunArrays | None = None
    for n, tmap in sorted(maps.items()):
        paths = RunArrays.from_mapping(tmap.paths)
        epochs = RunArrays.from_mapping(tmap.epochs)
        if not epochs.same_layout(paths):  # same runs in the paths' order
            epochs = RunArrays.from_mapping({run: tmap.epochs[run] for run in paths.names})
        if shared is None:
            shared = epochs
            arrays.update(runs=np.array(epochs.names, dtype=str), offsets=epochs.offsets)
            arrays["epochs"] = _smallest_int(epochs.flat, EPOCH_TYPES)
        elif not (epochs.same_layout(shared) and np.array_equal(epochs.flat, shared.flat)):
            arrays[f"n{n}_runs"] = np.array(epochs.names, dtype=str)
            arrays[f"n{n}_offsets"] = epochs.offsets
            arrays[f"n{n}_epochs"] = _smallest_int(epochs.flat, EPOCH_TYPES)
        arrays[f"n{n}_paths"] = _smallest_int(paths.flat)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # not compressed: loading is the cost that matters
    return buffer.getvalue()


def _read_paths(path: Path, ns: list[int]) -> dict[int, tuple[RunArrays, RunArrays]]:
    """``{n: (paths, epochs)}`` from a fit's paths.npz; raises ValueError if damaged."""
    with np.load(io.BytesIO(_read(path / PATHS_FILE)), allow_pickle=False) as npz:
        flat = {name: npz[name] for name in npz.files}
    # One RunArrays object for the shared epochs, so every map holds the same
    # one (a pickle of the fit, as the dashboard's cache makes, stores it once).
    epochs_of: dict[str, RunArrays] = {}
    out = {}
    for n in ns:
        prefix = f"n{n}_" if f"n{n}_runs" in flat else ""
        if prefix not in epochs_of:
            names = flat[f"{prefix}runs"]
            if names.dtype.kind != "U":
                raise ValueError(f"run names of n={n} are not text")
            epochs_of[prefix] = RunArrays(
                names.tolist(), flat[f"{prefix}epochs"], flat[f"{prefix}offsets"]
            )
        epochs = epochs_of[prefix]
        paths = RunArrays(epochs.names, flat[f"n{n}_paths"], epochs.offsets)
        if len(paths.flat) and (paths.flat.min() < 0 or paths.flat.max() >= n):
            raise ValueError(f"a state of the n={n} map is out of range")
        out[n] = (paths, epochs)
    return out


def read_fit(path: Path) -> tuple[dict, dict[int, dict]] | None:
    """The JSON payload and the model arrays of a saved fit, or None if absent/unreadable.

    Not the paths of a version-3 fit (see :func:`load_fit_folder`): listing fits
    and reading model arrays never need them.
    """
    if _linked(path):
        return None
    try:
        payload = json.loads(_read(path / FIT_FILE))
        with np.load(io.BytesIO(_read(path / ARRAYS_FILE)), allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except Exception:  # noqa: BLE001 - a damaged or refused fit is simply not there
        return None
    if not isinstance(payload, dict) or payload.get("store_version") not in READABLE_VERSIONS:
        return None
    models: dict[int, dict] = {}
    for name, value in flat.items():
        head, _, field = name.partition("_")
        if head.startswith("n") and head[1:].isdigit():
            models.setdefault(int(head[1:]), {})[field] = value
    return payload, models


def load_fit_folder(path: Path) -> tuple[FitResult, dict, dict[int, dict]] | None:
    """(result with its maps' paths, payload, model arrays) of a saved fit, or None.

    None when anything is absent, refused (a symlink) or damaged, e.g. a
    version-3 fit without a readable paths.npz: a broken fit is not there.
    """
    loaded = read_fit(path)
    if loaded is None:
        return None
    payload, models = loaded
    try:
        paths = None
        if payload["store_version"] >= 3:
            paths = _read_paths(path, [int(n) for n in payload["maps"]])
        return result_from_payload(payload, paths), payload, models
    except Exception:  # noqa: BLE001 - a damaged or refused fit is simply not there
        return None


def result_from_payload(
    payload: dict, paths: dict[int, tuple[RunArrays, RunArrays]] | None = None
) -> FitResult:
    """Rebuild a FitResult from a saved payload (null floats come back as NaN).

    ``paths``: ``{n: (paths, epochs)}`` of a version-3 fit (from paths.npz); a
    version-2 payload holds them itself.
    """
    sweep = pd.DataFrame(payload["sweep"], columns=payload["sweep_columns"])
    for column in sweep.columns:
        if column not in ("feasible", "error"):
            sweep[column] = pd.to_numeric(sweep[column], errors="coerce")
    sweep["feasible"] = sweep["feasible"].astype(bool)
    for column in ("n", "failures"):
        sweep[column] = sweep[column].astype(int)
    maps = {}
    for n, data in payload["maps"].items():
        for state in data["states"]:
            if state["mean_epoch"] is None:
                state["mean_epoch"] = float("nan")
        if paths is None:  # version 2: lists in the JSON
            maps[int(n)] = TrainingMap.from_dict(data)
        else:
            maps[int(n)] = TrainingMap.from_dict(data, *paths[int(n)])
    return FitResult(
        experiment=payload["experiment"],
        fingerprint=payload["fingerprint"],
        params=payload["params"],
        feature_names=payload["feature_names"],
        runs=payload["runs"],
        excluded_runs=payload["excluded_runs"],
        sweep=sweep,
        selected_n=int(payload["selected_n"]),
        maps=maps,
        warnings=list(payload.get("warnings", [])),
        selection=dict(payload.get("selection") or {}),  # absent in older fits
        bootstrap=dict(payload.get("bootstrap") or {}),  # absent in fits saved before it existed
    )


def bootstrap_key(bootstrap: dict) -> str:
    """Which request a bootstrap answers: criterion, n and whether n was given."""
    how = "given" if bootstrap.get("n_given") else "selected"
    return f"{bootstrap.get('criterion')}/{bootstrap.get('n')}/{how}"


def save_bootstrap(root, experiment, key: str, bootstrap: dict) -> bool:
    """Add ``bootstrap`` to the saved fit ``key`` (atomically); False if there is no such fit.

    The bootstrap does not change the sweep or the maps, so it is added to the
    saved fit, in its own small file (one entry per :func:`bootstrap_key`, so
    a bootstrap for another n does not replace the selected n's).
    """
    base = fits_dir(root, experiment) / key
    if _linked(base) or (base / FIT_FILE).is_symlink() or not (base / FIT_FILE).exists():
        return False  # no such fit, or one reached through a symlink (never written)
    saved = _read_bootstraps(base)
    saved[bootstrap_key(bootstrap)] = bootstrap
    tmp = base / f".{BOOTSTRAPS_FILE}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.write_text(json.dumps(_plain(saved), allow_nan=False))
        os.replace(tmp, base / BOOTSTRAPS_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def find_bootstrap(root, experiment, key: str, request: dict) -> dict | None:
    """The saved bootstrap of fit ``key`` for ``request`` (criterion, n, n_given), or None."""
    found = _read_bootstraps(fits_dir(root, experiment) / key).get(bootstrap_key(request))
    return dict(found) if found else None


def _read_bootstraps(base: Path) -> dict:
    if _linked(base):
        return {}
    try:
        found = json.loads(_read(base / BOOTSTRAPS_FILE))  # refuses a symlink
    except (ValueError, RecursionError):  # absent, linked or bad: RunDirError is a ValueError
        return {}
    return found if isinstance(found, dict) else {}


def find_fit(root, experiment, key: str) -> tuple[FitResult, dict[int, dict]] | None:
    loaded = load_fit_folder(fits_dir(root, experiment) / key)
    if loaded is None:
        return None
    result, _, models = loaded
    return result, models


def _summary(payload: dict) -> dict:
    return {
        "created_at": payload.get("created_at"),
        "runs_fingerprint": payload.get("runs_fingerprint"),
        "params": payload.get("params", {}),
        "selected_n": payload.get("selected_n"),
        "feasible_n": sorted(int(n) for n in payload.get("maps", {})),
        "n_runs": len(payload.get("runs", [])),
        "run_names": _run_names(payload),
    }


def _run_names(payload: dict) -> list[str]:
    """Every run the experiment had when it was fitted: the fitted and the excluded ones."""
    return sorted({*payload.get("runs", []), *payload.get("excluded_runs", {})})


def run_names_at_fit(summary: dict) -> list[str] | None:
    """The runs a listed fit saw (from its summary, else its full payload), or None."""
    if "run_names" in summary:
        return summary["run_names"]
    try:  # a summary written before it held the names
        payload = json.loads(_read(Path(summary["path"]) / FIT_FILE))
    except (ValueError, RecursionError, KeyError):  # RunDirError is a ValueError
        return None
    return _run_names(payload) if isinstance(payload, dict) else None


def list_saved(root, experiment) -> list[dict]:
    """Summaries of every saved fit of an experiment (newest first)."""
    base = fits_dir(root, experiment)
    if base.is_symlink() or not base.is_dir():
        return []
    out = []
    for child in base.iterdir():
        if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
            continue
        try:
            summary_file = child / SUMMARY_FILE
            old = not os.path.lexists(summary_file)  # saved before summaries existed
            summary = json.loads(_read(child / FIT_FILE if old else summary_file))
            if not isinstance(summary, dict):
                continue
            summary = _summary(summary) if old else summary
        except (ValueError, RecursionError):  # RunDirError is a ValueError
            continue
        out.append({"key": child.name, **summary, "path": str(child)})
    out.sort(key=lambda d: d["created_at"] or "", reverse=True)
    return out


# ------------------------------------------------------------- state names
# Names are the user's, not the fit's: a separate small file beside fit.json, so
# renaming never rewrites (or risks) the fit itself. Keys are strings in JSON.


def read_state_names(root, experiment, key: str) -> dict[int, dict[int, str]]:
    """``{n: {state: name}}`` of a saved fit; {} when none were given or the file is bad."""
    folder = fits_dir(root, experiment) / key
    if _linked(folder):
        return {}
    try:
        raw = json.loads(_read(folder / NAMES_FILE))
    except (ValueError, RecursionError):  # absent, linked or bad: RunDirError is a ValueError
        return {}
    names: dict[int, dict[int, str]] = {}
    if not isinstance(raw, dict):
        return names
    for n, states in raw.items():
        if not (str(n).isdigit() and isinstance(states, dict)):
            continue
        names[int(n)] = {
            int(k): v for k, v in states.items() if str(k).isdigit() and isinstance(v, str)
        }
    return names


def write_state_name(root, experiment, key: str, n: int, state: int, name: str) -> Path:
    """Set (or with ``name == ""`` remove) one state's name, atomically.

    ``name`` must already be validated (``analysis.captions.clean_state_name``);
    the fit directory must exist. Returns the names file.
    """
    folder = fits_dir(root, experiment) / key
    if _linked(folder) or (folder / NAMES_FILE).is_symlink() or (folder / FIT_FILE).is_symlink():
        raise FileNotFoundError(f"no saved fit {key} for {experiment} (a symlink is refused)")
    if not (folder / FIT_FILE).is_file():
        raise FileNotFoundError(f"no saved fit {key} for {experiment}")
    names = read_state_names(root, experiment, key)
    states = names.setdefault(int(n), {})
    if name:
        states[int(state)] = name
    else:
        states.pop(int(state), None)
    payload = {str(k): {str(s): v for s, v in sorted(d.items())} for k, d in names.items() if d}
    path = folder / NAMES_FILE
    tmp = folder / f".{NAMES_FILE}.{os.getpid()}-{time.monotonic_ns()}"
    tmp.write_text(json.dumps(payload, ensure_ascii=False, sort_keys=True))
    os.replace(tmp, path)
    return path
