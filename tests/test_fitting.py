"""The sweep's worker side (analysis.fitting): light to import, same fits wherever k-means runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from trainmap.analysis.fitting import fit_restarts, initial_params
from trainmap.analysis.model import run_sweep
from trainmap.analysis.prepare import zscore
from trainmap.analysis.synthetic import make_synthetic


def small_data(n_runs=6, n_checkpoints=60, seed=5):
    truth = make_synthetic(n_runs, n_checkpoints, seed=seed, n_states=3, n_features=4)
    X = [zscore(x)[0] for x in truth.X]
    train, held = np.concatenate(X[:4]), np.concatenate(X[4:])
    return train, [len(x) for x in X[:4]], held, [len(x) for x in X[4:]]


def test_worker_module_imports_neither_scikit_learn_nor_pandas():
    # A worker process unpickles fit_restarts, so this import is its start-up cost.
    code = (
        "import json, sys; import trainmap.analysis.fitting; "
        "print(json.dumps([m for m in ('sklearn', 'pandas', 'hmmlearn', 'torch', 'scipy') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_starts_made_by_the_caller_give_the_same_fits():
    X, lengths, held, held_lengths = small_data()
    common = dict(n_iter=15, seed=2)
    here = fit_restarts(X, lengths, held, held_lengths, 3, [0, 1], **common)
    starts = initial_params(X, 3, [0, 1], seed=2)
    given = fit_restarts(X, lengths, held, held_lengths, 3, [0, 1], starts=starts, **common)
    for a, b in zip(here, given):
        assert a["ok"] and b["ok"]
        assert (a["train_ll"], a["heldout_ll"], a["n_iter"]) == (
            b["train_ll"],
            b["heldout_ll"],
            b["n_iter"],
        )
        for name in a["arrays"]:
            np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name])


def test_sweep_with_more_states_than_rows_records_the_failures():
    # k-means cannot start 8 clusters on 6 rows: made in the sweep's process,
    # that failure must not stop the sweep; the worker records it.
    rng = np.random.default_rng(0)
    X, lengths = rng.normal(size=(6, 2)), [3, 3]
    held, held_lengths = rng.normal(size=(4, 2)), [2, 2]
    records = run_sweep(
        X, lengths, held, held_lengths, max_states=8, restarts=2, n_iter=5,
        workers=1, backend="sequential", progress_bar=False,
    )  # fmt: skip
    assert [(r["n"], r["restart"]) for r in records] == [
        (n, r) for n in range(1, 9) for r in range(2)
    ]
    too_many = [r for r in records if r["n"] > len(X)]
    assert too_many and all(not r["ok"] and "too few points" in r["error"] for r in too_many)
