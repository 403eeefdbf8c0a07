"""Saved fits: plain JSON + npz next to the experiment, never pickle.

Layout::

    ROOT/EXPERIMENT/.fits/<key>/
        fit.json      everything but the model arrays (params, features, sweep
                      table, maps, excluded runs, scaling summary)
        models.npz    per feasible n: startprob, transmat, means, covars (canonical
                      state order), plus the scaling arrays

``key`` hashes the experiment fingerprint (which changes whenever any run's
metadata or metrics change, see ``trainer.rundir.experiment_fingerprint``) and
the parameters that determine the fit, so asking again for the same fit finds
it, and a changed run makes a new key (the old fit is simply not found).
A run directory may come from someone else: loading uses ``json`` and
``np.load(..., allow_pickle=False)`` only, so a saved fit cannot run code.
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

from analysis.result import FitResult, TrainingMap

FITS_DIR = ".fits"
FIT_FILE = "fit.json"
SUMMARY_FILE = "summary.json"
ARRAYS_FILE = "models.npz"
STORE_VERSION = 2  # 2: detour tests and the corrected regression


def fits_dir(root, experiment) -> Path:
    from trainer import rundir

    return rundir.experiment_path(root, experiment) / FITS_DIR


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
    base = fits_dir(root, experiment)
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
            "maps": {str(n): m.to_dict() for n, m in result.maps.items()},
            "warnings": list(result.warnings),
            "selection": dict(result.selection),
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
        if final.exists():  # an identical fit saved meanwhile: keep one
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_fit(path: Path) -> tuple[dict, dict[int, dict]] | None:
    """The JSON payload and the model arrays of a saved fit, or None if absent/unreadable."""
    try:
        payload = json.loads((path / FIT_FILE).read_text())
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except (OSError, ValueError):
        return None
    if payload.get("store_version") != STORE_VERSION:
        return None
    models: dict[int, dict] = {}
    for name, value in flat.items():
        head, _, field = name.partition("_")
        if head.startswith("n") and head[1:].isdigit():
            models.setdefault(int(head[1:]), {})[field] = value
    return payload, models


def result_from_payload(payload: dict) -> FitResult:
    """Rebuild a FitResult from a saved payload (null floats come back as NaN)."""
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
        maps[int(n)] = TrainingMap.from_dict(data)
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
    )


def find_fit(root, experiment, key: str) -> tuple[FitResult, dict[int, dict]] | None:
    loaded = read_fit(fits_dir(root, experiment) / key)
    if loaded is None:
        return None
    payload, models = loaded
    return result_from_payload(payload), models


def _summary(payload: dict) -> dict:
    return {
        "created_at": payload.get("created_at"),
        "runs_fingerprint": payload.get("runs_fingerprint"),
        "params": payload.get("params", {}),
        "selected_n": payload.get("selected_n"),
        "feasible_n": sorted(int(n) for n in payload.get("maps", {})),
        "n_runs": len(payload.get("runs", [])),
    }


def list_saved(root, experiment) -> list[dict]:
    """Summaries of every saved fit of an experiment (newest first)."""
    base = fits_dir(root, experiment)
    if not base.is_dir():
        return []
    out = []
    for child in base.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            if (child / SUMMARY_FILE).exists():
                summary = json.loads((child / SUMMARY_FILE).read_text())
            else:  # saved before summaries existed
                summary = _summary(json.loads((child / FIT_FILE).read_text()))
        except (OSError, ValueError):
            continue
        out.append({"key": child.name, **summary, "path": str(child)})
    out.sort(key=lambda d: d["created_at"] or "", reverse=True)
    return out
