"""Tracker: tracking a user's own PyTorch loop through the run-directory module."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from trainmap.trainer import Tracker, rundir
from trainmap.trainer.columns import WEIGHT_COLUMNS
from trainmap.trainer.metrics import HookPointError, WeightMetrics


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        nn.Linear(8, 2),
    )


def readme_example() -> str:
    """The first Python block of the README's "Track your own model" section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Track your own model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example(tmp_path, monkeypatch):
    """The README's example runs as written (in tmp_path) and gives a map worth a look."""
    import warnings

    from trainmap import analysis

    monkeypatch.chdir(tmp_path)  # the example writes to runs/my-exp/
    # One thread: on a shared 2-core machine torch's default of 2 made these small
    # steps 20x slower (measured 87 s vs 12 s under load 6; 4 s idle).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(readme_example(), "README.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)

    runs = rundir.list_runs(tmp_path / "runs", "my-exp")
    assert len(runs) == 8 and {r.status for r in runs} == {"completed"}
    run = rundir.load_run(tmp_path / "runs", "my-exp", "seed-0")
    assert run.metrics["epoch"].tolist() == list(range(2, 101, 2))
    assert {"l2", "spectral", "0/l2", "2/var_sv", "train_loss", "eval_acc"} <= set(run.metrics)
    assert run.meta["hook_points"] == ["0", "2"]
    assert run.meta["config"] == {"lr": 1e-2, "weight_decay": 0.1}
    # `trainmap fit runs/my-exp` with its defaults: at least two states and a transition.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no held-out runs": 8 runs is few, as said
        tmap = analysis.fit_experiment(tmp_path / "runs", "my-exp").map()
    assert tmap.n_states >= 2 and len(tmap.edges) >= 1
    assert sum(c is not None for c in tmap.convergence_epoch.values()) >= 4


def test_rows_hold_the_weight_metrics_and_scalars(tmp_path):
    model = toy_model()
    with Tracker(model, ["0", "2.*", "3"], root=tmp_path, experiment="e", run="r") as tracker:
        expected, _ = WeightMetrics(model, ["0", "2.0", "3"]).compute()
        row = tracker.log(1, step=10, eval_acc=0.5, note_count=3)
        assert tracker.hook_points == ["0", "2.0", "3"]  # the glob expanded to modules with weights
    run = rundir.load_run(tmp_path, "e", "r")
    stored = run.metrics.iloc[0]
    assert stored["step"] == 10 and stored["eval_acc"] == 0.5 and stored["note_count"] == 3
    for column in WEIGHT_COLUMNS:
        assert stored[column] == pytest.approx(expected[column])
        assert stored[f"2.0/{column}"] == pytest.approx(expected[f"2.0/{column}"])
    assert row["l2"] == expected["l2"]


def test_step_defaults_to_epoch_and_tensors_are_accepted(tmp_path):
    with Tracker(toy_model(), None, tmp_path / "e" / "r") as tracker:
        tracker.log(3, train_loss=torch.tensor(0.25, requires_grad=True) * 2)
    frame = rundir.read_metrics(tmp_path / "e" / "r")
    assert frame["step"].tolist() == [3] and frame["train_loss"].tolist() == [0.5]


def test_unknown_hook_point_fails_at_construction_with_close_matches(tmp_path):
    model = nn.Sequential()
    model.add_module("encoder", nn.Linear(3, 3))
    model.add_module("decoder", nn.Linear(3, 3))
    with pytest.raises(HookPointError) as info:
        Tracker(model, ["encodr"], tmp_path / "e" / "r")
    message = str(info.value)
    assert "unknown hook point 'encodr'" in message and "did you mean encoder" in message
    assert "valid names: encoder, decoder" in message and "\n" not in message
    assert not (tmp_path / "e").exists()  # nothing written for a typo


def test_unknown_name_without_close_match_lists_valid_names(tmp_path):
    with pytest.raises(
        HookPointError, match=r"unknown hook point 'zzz'; valid names: 0, 2, 2.0, 3"
    ):
        Tracker(toy_model(), ["zzz"], tmp_path / "e" / "r")


def test_hook_point_without_weights_says_so(tmp_path):
    with pytest.raises(HookPointError, match=r"hook point '1' has no weights \(a ReLU"):
        Tracker(toy_model(), ["1"], tmp_path / "e" / "r")
    with pytest.raises(HookPointError, match="matches no module with weights"):
        Tracker(toy_model(), ["nothing.*"], tmp_path / "e" / "r")


def test_non_finite_weights_mark_the_run_diverged_without_crashing(tmp_path):
    model = toy_model()
    with Tracker(model, ["0", "3"], tmp_path / "e" / "r") as tracker:
        tracker.log(1, eval_acc=0.5)
        with torch.no_grad():
            model[3].weight[0, 0] = float("inf")
        row = tracker.log(2, eval_acc=0.5)
        tracker.log(3)
    assert all(math.isnan(row[c]) for c in WEIGHT_COLUMNS) and row["eval_acc"] == 0.5
    summary = rundir.summarize_run(tmp_path / "e" / "r")
    assert summary.status == "diverged" and summary.meta["diverged_at_epoch"] == 2
    assert summary.checkpoints == 3
    frame = rundir.read_metrics(tmp_path / "e" / "r")
    assert not math.isnan(frame["l2"].iloc[0]) and math.isnan(frame["l2"].iloc[1])


def test_exception_in_the_loop_marks_the_run_failed(tmp_path):
    with pytest.raises(RuntimeError):
        with Tracker(toy_model(), None, tmp_path / "e" / "r") as tracker:
            tracker.log(1)
            raise RuntimeError("loss exploded")
    summary = rundir.summarize_run(tmp_path / "e" / "r")
    assert summary.status == "failed" and "loss exploded" in summary.reason
    assert summary.checkpoints == 1


def test_needs_a_run_location():
    with pytest.raises(ValueError, match="run_dir"):
        Tracker(toy_model(), None)


# ------------------------------------------------- background computation


def train_and_log(tracker, model, checkpoints=6):
    """A few SGD steps with a row after each: the weights move between rows."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    for epoch in range(1, checkpoints + 1):
        loss = model(inputs).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker.log(epoch, train_loss=loss)


def test_background_rows_equal_synchronous_rows(tmp_path):
    for mode in ("sync", "background"):
        model = toy_model()
        with Tracker(model, None, tmp_path / mode / "r", background=mode == "background") as t:
            train_and_log(t, model)
    sync = rundir.read_metrics(tmp_path / "sync" / "r")
    background = rundir.read_metrics(tmp_path / "background" / "r")
    assert sync["epoch"].tolist() == list(range(1, 7))
    pd.testing.assert_frame_equal(background, sync)  # same order, same numbers, bit for bit


def test_background_job_runs_after_the_rows_logged_before_it(tmp_path):
    model = toy_model()
    seen = []
    with Tracker(model, None, tmp_path / "e" / "r", background=True) as tracker:
        train_and_log(tracker, model, checkpoints=3)
        tracker.after_logged(lambda: seen.append(len(rundir.read_metrics(tracker.path))))
        train_and_log(tracker, model, checkpoints=2)
    assert seen == [3]  # the resume state is saved this way: never before its row
    assert rundir.read_meta(tmp_path / "e" / "r")["status"] == "completed"


def test_background_divergence_is_known_when_log_returns(tmp_path):
    model = toy_model()
    with Tracker(model, None, tmp_path / "e" / "r", background=True) as tracker:
        tracker.log(1)
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
        row = tracker.log(2, eval_acc=0.5)
        assert tracker.diverged and row == {"epoch": 2, "step": 2, "eval_acc": 0.5}
    meta = rundir.read_meta(tmp_path / "e" / "r")
    assert meta["status"] == "diverged" and meta["diverged_at_epoch"] == 2
    assert math.isnan(rundir.read_metrics(tmp_path / "e" / "r")["l2"].iloc[-1])


def test_background_error_fails_the_run_and_is_raised(tmp_path):
    def broken():
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        with Tracker(toy_model(), None, tmp_path / "e" / "r", background=True) as tracker:
            tracker.log(1)
            tracker.after_logged(broken)
    meta = rundir.read_meta(tmp_path / "e" / "r")
    assert meta["status"] == "failed" and "disk on fire" in meta["error"]
    assert len(rundir.read_metrics(tmp_path / "e" / "r")) == 1  # the row before it is kept
