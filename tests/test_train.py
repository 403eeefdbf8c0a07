"""The training loop: determinism, resume, kill, Ctrl-C, reuse, dask, tasks and CLI errors.

Everything runs the ``tiny`` presets (a second or two per seed) so the file
stays well inside the test budget on two shared cores.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from trainmap.trainer import cli, rundir
from trainmap.trainer.columns import SCALAR_COLUMNS, WEIGHT_COLUMNS
from trainmap.trainer.errors import UserError
from trainmap.trainer.train import parse_seeds, train_seeds

torch.set_num_threads(1)  # the runs use one thread each; keep this process from oversubscribing

TINY = dict(preset="tiny", progress=False)


def metrics_of(root, experiment, seed):
    return rundir.load_run(root, experiment, f"seed-{seed}").metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Seeds 0 and 1 of tiny modular addition, trained in this process, one after the other."""
    root = tmp_path_factory.mktemp("reference")
    summaries = train_seeds("modadd", seeds=[0, 1], root=root, experiment="ref", workers=1, **TINY)
    assert [s.status for s in summaries] == ["completed", "completed"]
    return root


def test_rows_have_all_twenty_metrics(reference):
    frame = metrics_of(reference, "ref", 0)
    meta = rundir.read_meta(reference / "ref" / "seed-0")
    config = meta["config"]
    assert len(frame) == config["epochs"] // config["eval_every"]
    every = config["eval_every"]
    assert frame["epoch"].tolist() == list(range(every, config["epochs"] + 1, every))
    assert set(WEIGHT_COLUMNS) | set(SCALAR_COLUMNS) <= set(frame.columns)
    assert frame[list(WEIGHT_COLUMNS) + list(SCALAR_COLUMNS)].notna().all().all()
    for hook in meta["hook_points"]:
        assert f"{hook}/spectral" in frame
    assert meta["task"] == "modadd" and meta["seed"] == 0 and config["preset"] == "tiny"
    assert (frame["step"] == frame["epoch"]).all()  # full batch: one step per epoch
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[0]


def test_same_seed_same_metrics_in_loky_workers(reference, tmp_path):
    summaries = train_seeds(
        "modadd", seeds=[0, 1], root=tmp_path, experiment="ref", workers=2, **TINY
    )
    assert [s.status for s in summaries] == ["completed", "completed"]
    for seed in (0, 1):
        pd.testing.assert_frame_equal(
            metrics_of(tmp_path, "ref", seed), metrics_of(reference, "ref", seed)
        )
    assert not metrics_of(tmp_path, "ref", 0).equals(metrics_of(tmp_path, "ref", 1))


def test_dask_cluster_gives_the_same_metrics(reference, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        summaries = train_seeds(
            "modadd",
            seeds=[0, 1],
            root=tmp_path,
            experiment="ref",
            backend="dask",
            scheduler=cluster.scheduler_address,
            **TINY,
        )
    assert [s.status for s in summaries] == ["completed", "completed"]
    writers = {rundir.read_meta(tmp_path / "ref" / f"seed-{s}")["writer"]["pid"] for s in (0, 1)}
    assert os.getpid() not in writers  # trained in the cluster's worker processes
    for seed in (0, 1):
        pd.testing.assert_frame_equal(
            metrics_of(tmp_path, "ref", seed), metrics_of(reference, "ref", seed)
        )


def test_completed_runs_are_reused_and_a_changed_config_refused(reference):
    before = rundir.run_fingerprint(reference / "ref" / "seed-0")
    summaries = train_seeds("modadd", seeds=[0, 1], root=reference, experiment="ref", **TINY)
    assert [s.status for s in summaries] == ["completed", "completed"]
    assert rundir.run_fingerprint(reference / "ref" / "seed-0") == before
    with pytest.raises(UserError, match=r"different config \(epochs\)"):
        train_seeds("modadd", seeds=[0], root=reference, experiment="ref", epochs=8, **TINY)


TRAIN_COMMAND = [
    sys.executable, "-m", "trainmap.trainer.cli", "train", "--task", "modadd", "--preset", "tiny",
    "--seeds", "0", "--epochs", "150", "--eval-every", "3", "--workers", "1", "--no-progress",
]  # fmt: skip


def default_sigint():
    """In the child: Ctrl-C raises KeyboardInterrupt even when the test runner was
    started in the background, where a shell hands its children SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_wait_for_rows(out, rows=3):
    process = subprocess.Popen(
        [*TRAIN_COMMAND, "--out", str(out)], stderr=subprocess.PIPE, preexec_fn=default_sigint
    )
    metrics_file = out / "seed-0" / rundir.METRICS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics_file.exists() and metrics_file.read_bytes().count(b"\n") >= rows:
            return process
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.005)
    process.kill()
    raise AssertionError("training wrote no rows in time")


def test_kill_leaves_a_readable_run_and_resume_equals_uninterrupted(tmp_path):
    process = start_and_wait_for_rows(tmp_path / "killed")
    process.send_signal(signal.SIGKILL)
    process.wait()
    # the killed run is readable: completed checkpoints kept, shown as interrupted
    summary = rundir.summarize_run(tmp_path / "killed" / "seed-0")
    assert summary.status == "interrupted" and "gone" in summary.reason
    assert 3 <= summary.checkpoints < 50
    assert rundir.load_state(tmp_path / "killed" / "seed-0") is not None

    options = dict(seeds=[0], root=tmp_path, epochs=150, eval_every=3, **TINY)
    with pytest.raises(UserError, match="pass --resume"):
        train_seeds("modadd", experiment="killed", **options)
    (resumed,) = train_seeds("modadd", experiment="killed", resume=True, **options)
    assert resumed.status == "completed" and resumed.checkpoints == 50
    (whole,) = train_seeds("modadd", experiment="whole", workers=1, **options)
    pd.testing.assert_frame_equal(
        metrics_of(tmp_path, "killed", 0), metrics_of(tmp_path, "whole", 0)
    )


def test_ctrl_c_marks_the_run_interrupted_and_keeps_checkpoints(tmp_path):
    process = start_and_wait_for_rows(tmp_path / "exp", rows=2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    meta = rundir.read_meta(tmp_path / "exp" / "seed-0")
    assert meta["status"] == "interrupted"  # written by the run itself, not inferred
    assert len(rundir.read_metrics(tmp_path / "exp" / "seed-0")) >= 2


def test_ctrl_c_with_worker_processes_leaves_no_run_running(tmp_path):
    # a terminal's Ctrl-C reaches the whole process group: the CLI and its loky workers
    command = [*TRAIN_COMMAND, "--out", str(tmp_path / "exp")]
    command[command.index("--workers") + 1] = "2"
    command[command.index("--seeds") + 1] = "0-3"
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=default_sigint
    )
    metrics_file = tmp_path / "exp" / "seed-0" / rundir.METRICS_FILE
    deadline = time.monotonic() + 120
    while not (metrics_file.exists() and metrics_file.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    summaries = rundir.list_runs(tmp_path, "exp")
    assert summaries and all(s.status == "interrupted" for s in summaries)
    assert all(rundir.read_meta(s.path)["status"] == "interrupted" for s in summaries)
    assert summaries[0].checkpoints >= 2


@pytest.mark.parametrize("task", ["modadd_ln", "parity", "digits"])
def test_every_task_trains_its_tiny_preset(task, tmp_path):
    (summary,) = train_seeds(task, seeds=[3], root=tmp_path, experiment="t", workers=1, **TINY)
    assert summary.status == "completed" and summary.checkpoints >= 3
    frame = metrics_of(tmp_path, "t", 3)
    assert frame[list(WEIGHT_COLUMNS)].notna().all().all()
    assert 0 <= frame["eval_acc"].iloc[-1] <= 1 and frame["train_loss"].notna().all()


def test_digits_conv_kernels_are_reshaped(tmp_path):
    train_seeds("digits", seeds=[0], root=tmp_path, experiment="d", workers=1, **TINY)
    meta = rundir.read_meta(tmp_path / "d" / "seed-0")
    assert meta["hook_points"] == ["conv1", "conv2", "fc"]
    assert metrics_of(tmp_path, "d", 0)["conv2/spectral"].gt(0).all()


def test_split_heads_makes_each_attention_head_a_matrix(reference, tmp_path):
    train_seeds("modadd", seeds=[0], root=tmp_path, experiment="h", split_heads=True, **TINY)
    split, whole = metrics_of(tmp_path, "h", 0), metrics_of(reference, "ref", 0)
    # same training (metrics never change the weights), different matrices for attention
    pd.testing.assert_series_equal(split["eval_loss"], whole["eval_loss"])
    assert (split["blocks.0.attn/spectral"] < whole["blocks.0.attn/spectral"]).all()
    pd.testing.assert_series_equal(split["blocks.0.mlp/spectral"], whole["blocks.0.mlp/spectral"])


def test_divergence_ends_the_run_as_diverged_not_a_crash(tmp_path):
    (summary,) = train_seeds(
        "parity", seeds=[0], root=tmp_path, experiment="x", workers=1, lr=1e30, eval_every=100,
        **TINY,
    )  # fmt: skip
    assert summary.status == "diverged"
    epoch = summary.meta["diverged_at_epoch"]
    assert epoch < 6  # caught when the loss blew up, not at the next scheduled checkpoint
    frame = metrics_of(tmp_path, "x", 0)
    assert frame["epoch"].iloc[-1] == epoch and math.isnan(frame["l2"].iloc[-1])


# ------------------------------------------------------------------- CLI


def run_cli(capsys, *args):
    code = cli.main(["train", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'; valid tasks: modadd, modadd_ln, parity, digits"),
        (["--epochs", "-5"], "--epochs must be a positive integer, got -5"),
        (["--eval-every", "0"], "--eval-every must be a positive integer"),
        (["--hook-points", "blocks.0.mlpp"], "unknown hook point 'blocks.0.mlpp'; did you mean"),
        (
            ["--preset", "huge"],
            "unknown preset 'huge' for task modadd; valid presets: paper, quick, tiny",
        ),
        (["--seeds", "a-b"], "cannot read seeds 'a-b'"),
        (["--backend", "dask"], "needs --scheduler"),
    ],
)
def test_bad_config_is_a_one_line_error(capsys, tmp_path, args, message):
    code, err = run_cli(capsys, "--out", str(tmp_path / "exp"), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("trainmap train: error: ")
    assert message in err
    assert not (tmp_path / "exp").exists()


def test_bad_out_is_a_one_line_error(capsys):
    code, err = run_cli(capsys, "--out", "just-a-name")
    assert code == 2 and "--out must be ROOT/EXPERIMENT" in err and err.count("\n") == 1


def test_cli_error_in_a_fresh_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainmap.trainer.cli",
            "train",
            "--task",
            "nope",
            "--out",
            str(tmp_path / "e"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "trainmap train: error: unknown task 'nope'; valid tasks: modadd, modadd_ln, parity, digits"
    ]


def test_cli_trains_and_modules_import_without_torch(capsys, tmp_path):
    code = cli.main(
        ["train", "--task", "parity", "--preset", "tiny", "--seeds", "0-1", "--workers", "1",
         "--no-progress", "--out", str(tmp_path / "p")]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "p/seed-0: completed" in out and "p/seed-1: completed" in out
    check = "import sys, trainmap.trainer, trainmap.trainer.train_cli, trainmap.trainer.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,7-8") == [1, 5, 7, 8]
    with pytest.raises(UserError):
        parse_seeds("")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("foreign_epoch", "not a checkpoint in metrics.jsonl"),
        ("object_array", "allow_pickle"),
        ("wrong_shapes", "does not fit this model"),
    ],
)
def test_resume_from_an_unusable_state_is_a_one_line_error(capsys, tmp_path, damage, message):
    import json

    import numpy as np

    args = ["train", "--preset", "tiny", "--seeds", "0", "--epochs", "4", "--eval-every", "2",
            "--workers", "1", "--no-progress", "--out", str(tmp_path / "e")]  # fmt: skip
    assert cli.main(args) == 0
    path = tmp_path / "e" / "seed-0"
    meta = json.loads((path / rundir.META_FILE).read_text())
    meta["status"] = "interrupted"
    (path / rundir.META_FILE).write_text(json.dumps(meta))
    arrays, info = rundir.load_state(path)
    if damage == "foreign_epoch":
        rundir.save_state(path, arrays, {**info, "epoch": 3, "step": 3})
    elif damage == "object_array":
        np.savez(path / "state" / "arrays.npz", x=np.array([object()], dtype=object))
    else:
        arrays = {k: (v[:1] if k.startswith("model.") else v) for k, v in arrays.items()}
        rundir.save_state(path, arrays, info)
    capsys.readouterr()
    assert cli.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trainmap train: error: ")
    assert message in err and "e/seed-0" in err


def test_background_metrics_give_the_same_run(reference, tmp_path):
    from trainmap.trainer.tasks import get_task
    from trainmap.trainer.train import train_run

    config = get_task("modadd").config("tiny", seed=0)
    path = train_run(config, tmp_path, "ref", progress=False, background_metrics=True)
    pd.testing.assert_frame_equal(metrics_of(tmp_path, "ref", 0), metrics_of(reference, "ref", 0))
    assert rundir.read_meta(path)["status"] == "completed"
    _, info = rundir.load_state(path, check_metrics=True)  # the state of the last row
    assert info["epoch"] == config.epochs
