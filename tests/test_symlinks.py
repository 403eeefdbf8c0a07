"""Symlinks never lead outside the root: not through a run's files, its state, or ``.fits``.

The rule (docs/format.md): files inside a run directory and everything under an
experiment's ``.fits`` must not be symlinks at all; run and experiment
directories may be symlinks only when they resolve inside the root. Each case
here plants a link to a "secret" run or fit outside the root and checks that the
reader, the analysis store, the CLI and the dashboard's data layer refuse it.
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from trainmap import analysis
from trainmap.analysis import store
from trainmap.analysis.synthetic import write_synthetic_experiment
from trainmap.trainer import cli, rundir

SECRET_METRIC = "secret_metric"


def write_run(root, experiment, run, value):
    with rundir.RunWriter.create(root, experiment, run, task="toy", seed=0) as writer:
        for epoch in range(3):
            writer.append({"epoch": epoch, "step": epoch, "eval_acc": value, SECRET_METRIC: value})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """ROOT/exp with one good run and runs whose files are links; the secrets live outside."""
    base = tmp_path_factory.mktemp("planted")
    outside, root = base / "outside", base / "root"
    write_run(outside, "secret", "run", 0.123)
    write_synthetic_experiment(outside, "fitted", n_runs=4, n_checkpoints=30, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(outside, "fitted", max_states=2, restarts=1, workers=1)
    secret = outside / "secret" / "run"

    exp = root / "exp"
    write_run(root, "exp", "good", 0.5)
    for run, name in (("meta-link", rundir.META_FILE), ("metrics-link", rundir.METRICS_FILE)):
        write_run(root, "exp", run, 0.5)
        (exp / run / name).unlink()
        (exp / run / name).symlink_to(secret / name)
    # a link that stays inside the root is refused all the same: one simple rule
    write_run(root, "exp", "inside-link", 0.5)
    (exp / "inside-link" / rundir.METRICS_FILE).unlink()
    (exp / "inside-link" / rundir.METRICS_FILE).symlink_to(exp / "good" / rundir.METRICS_FILE)
    write_run(root, "exp", "fifo-run", 0.5)  # a FIFO as a run's file must not hang a reader
    (exp / "fifo-run" / rundir.METRICS_FILE).unlink()
    os.mkfifo(exp / "fifo-run" / rundir.METRICS_FILE)

    # the experiment's .fits is a link to a fit made elsewhere
    (exp / store.FITS_DIR).symlink_to(outside / "fitted" / store.FITS_DIR)
    # another experiment whose .fits is real but holds a linked fit, and one with linked files
    write_synthetic_experiment(root, "keys", n_runs=4, n_checkpoints=30, seed=1)
    (root / "keys" / store.FITS_DIR).mkdir()
    (key,) = [p for p in (outside / "fitted" / store.FITS_DIR).iterdir()]
    (root / "keys" / store.FITS_DIR / key.name).symlink_to(key)
    write_synthetic_experiment(root, "files", n_runs=4, n_checkpoints=30, seed=1)
    (root / "files" / store.FITS_DIR / key.name).mkdir(parents=True)
    for child in key.iterdir():
        (root / "files" / store.FITS_DIR / key.name / child.name).symlink_to(child)
    return root, outside


LINKED_RUNS = {
    "meta-link": "meta.json is a symlink",
    "metrics-link": "metrics.jsonl is a symlink",
    "inside-link": "metrics.jsonl is a symlink",
    "fifo-run": "metrics.jsonl is not a regular file",
}


def test_reader_refuses_linked_run_files(planted):
    root, _ = planted
    summaries = {s.run: s for s in rundir.list_runs(root, "exp")}
    assert not summaries["good"].broken
    for run, reason in LINKED_RUNS.items():
        assert summaries[run].broken and reason in summaries[run].reason, summaries[run]
        assert summaries[run].last_eval_acc is None
        with pytest.raises(rundir.UnsafePathError, match=f"run exp/{run}: {reason}"):
            rundir.load_run(root, "exp", run)
    runs, broken = rundir.load_experiment(root, "exp")
    assert [r.name for r in runs] == ["good"]


def test_runs_list_shows_linked_runs_as_broken(planted, capsys):
    root, _ = planted
    assert cli.main(["runs", "list", str(root), "--experiment", "exp"]) == 0
    out = capsys.readouterr().out
    assert "0.123" not in out and "meta.json is a symlink: refused" in out


def test_writer_and_resume_state_never_follow_a_link(planted, tmp_path):
    _, outside = planted
    secret = outside / "secret" / "run"
    write_run(tmp_path, "exp", "run", 0.5)
    path = tmp_path / "exp" / "run"
    (path / rundir.METRICS_FILE).unlink()
    (path / rundir.METRICS_FILE).symlink_to(secret / rundir.METRICS_FILE)
    before = (secret / rundir.METRICS_FILE).read_bytes()
    with pytest.raises(rundir.RunDirError, match="symlink"):
        rundir.RunWriter.reopen(path)
    assert (secret / rundir.METRICS_FILE).read_bytes() == before

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (path / rundir.STATE_DIR).symlink_to(elsewhere)
    with pytest.raises(rundir.UnsafePathError):
        rundir.save_state(path, {"w": np.ones(2)}, {"epoch": 1, "step": 1})
    assert not any(elsewhere.iterdir())
    write_run(tmp_path, "exp", "run2", 0.5)
    rundir.save_state(tmp_path / "exp" / "run2", {"w": np.ones(2)}, {"epoch": 1, "step": 1})
    (path / rundir.STATE_DIR).unlink()
    (path / rundir.STATE_DIR).mkdir()
    (path / rundir.STATE_DIR / rundir.STATE_ARRAYS).symlink_to(
        tmp_path / "exp" / "run2" / rundir.STATE_DIR / rundir.STATE_ARRAYS
    )
    with pytest.raises(rundir.RunDirError, match="symlink"):
        rundir.load_state(path)


@pytest.mark.parametrize("experiment", ["exp", "keys", "files"])
def test_store_ignores_linked_fits(planted, experiment):
    root, _ = planted
    assert analysis.list_fits(root, experiment) == []
    for key in os.listdir(root / experiment / store.FITS_DIR):
        assert store.find_fit(root, experiment, key) is None


def test_saving_a_fit_through_a_linked_fits_folder_is_refused(planted):
    root, outside = planted
    before = sorted(os.listdir(outside / "fitted" / store.FITS_DIR))
    shutil.copytree(root / "keys", root / "linked-fits", ignore=shutil.ignore_patterns(".fits"))
    (root / "linked-fits" / store.FITS_DIR).symlink_to(outside / "fitted" / store.FITS_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(rundir.UnsafePathError, match="symlink"):
            analysis.fit_experiment(root, "linked-fits", max_states=2, restarts=1, workers=1)
    assert sorted(os.listdir(outside / "fitted" / store.FITS_DIR)) == before


def test_dashboard_data_layer_shows_nothing_from_outside(planted, tmp_path):
    from trainmap.app import data
    from trainmap.app.main import create_app

    root, _ = planted
    app = create_app(root, cache_dir=tmp_path / "cache")
    with app.server.app_context():
        for experiment in ("exp", "keys", "files"):
            fp = data.fingerprint(str(root), experiment)
            assert data.fit_result(str(root), experiment, fp) is None
            assert data.fit_overview(str(root), experiment, fp) is None
        fp = data.fingerprint(str(root), "exp")
        rows = {r["run"]: r for r in data.runs_view(str(root), "exp", fp)["rows"]}
        for run in LINKED_RUNS:
            assert rows[run]["status"] == rundir.BROKEN
            assert data.load_run_metrics(str(root), "exp", run) is None
            assert data.valid_run(str(root), "exp", fp, run) is None
        # metric choices come from the good run only (same columns, none of the secret's values)
        frame = data.load_run_metrics(str(root), "exp", "good")
        assert frame is not None and (frame["eval_acc"] == 0.5).all()


def test_state_names_are_never_read_or_written_through_a_link(planted, tmp_path):
    _, outside = planted
    (key,) = list((outside / "fitted" / store.FITS_DIR).iterdir())
    fits = tmp_path / "exp" / store.FITS_DIR
    shutil.copytree(key, fits / key.name)
    secret = tmp_path / "secret-names.json"
    secret.write_text('{"2": {"0": "from outside"}}')
    (fits / key.name / store.NAMES_FILE).symlink_to(secret)
    assert store.read_state_names(tmp_path, "exp", key.name) == {}
    with pytest.raises(FileNotFoundError, match="symlink"):
        store.write_state_name(tmp_path, "exp", key.name, 2, 0, "mine")
    assert secret.read_text() == '{"2": {"0": "from outside"}}'


def test_bootstraps_are_never_read_or_added_through_a_link(planted, tmp_path):
    _, outside = planted
    (key,) = list((outside / "fitted" / store.FITS_DIR).iterdir())
    fits = tmp_path / "exp" / store.FITS_DIR
    shutil.copytree(key, fits / key.name)
    secret = tmp_path / "secret-bootstraps.json"
    secret.write_text('{"x": {"n": 2}}')
    (fits / key.name / store.BOOTSTRAPS_FILE).unlink(missing_ok=True)
    (fits / key.name / store.BOOTSTRAPS_FILE).symlink_to(secret)
    assert store._read_bootstraps(fits / key.name) == {}
    linked = tmp_path / "linked" / store.FITS_DIR
    linked.parent.mkdir()
    linked.symlink_to(outside / "fitted" / store.FITS_DIR)
    assert not store.save_bootstrap(tmp_path, "linked", key.name, {"n": 2})
    assert secret.read_text() == '{"x": {"n": 2}}'
