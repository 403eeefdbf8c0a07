"""The run-directory format: round trip, concurrent readers, damage, path safety."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from trainmap.trainer import rundir
from trainmap.trainer.runs_cli import format_listing


def make_run(root, experiment="exp", run="seed-0", rows=3, **kwargs):
    writer = rundir.RunWriter.create(
        root, experiment, run, task="toy", seed=0, config={"lr": 1e-3}, hook_points=["fc"], **kwargs
    )
    for epoch in range(rows):
        writer.append({"epoch": epoch, "step": 10 * epoch, "l2": 1.0 + epoch, "fc/l2": 2.0 * epoch})
    return writer


def test_round_trip(tmp_path):
    with rundir.RunWriter.create(
        tmp_path,
        "exp",
        "seed-3",
        task="modadd",
        seed=3,
        config={"lr": 1e-3, "p": 113},
        hook_points=["blocks.0.mlp"],
    ) as writer:
        writer.append({"epoch": 0, "step": 0, "l2": 1.5, "eval_acc": 0.01, "blocks.0.mlp/l2": 0.5})
        writer.append(
            {
                "step": 5,
                "epoch": 1,
                "l2": np.float32(1.25),
                "eval_acc": float("nan"),
                "blocks.0.mlp/l2": np.float64(0.25),
            }
        )
    run = rundir.load_run(tmp_path, "exp", "seed-3")
    assert run.status == "completed"
    assert run.meta["seed"] == 3 and run.meta["config"] == {"lr": 1e-3, "p": 113}
    assert run.meta["hook_points"] == ["blocks.0.mlp"]
    assert run.meta["last_checkpoint"] == {"epoch": 1, "step": 5}
    assert run.meta["started_at"] and run.meta["ended_at"]
    assert "torch" in run.meta["versions"] and "trainmap" in run.meta["versions"]
    frame = run.metrics
    assert list(frame.columns) == ["epoch", "step", "l2", "eval_acc", "blocks.0.mlp/l2"]
    assert frame["step"].tolist() == [0, 5]
    assert frame["l2"].tolist() == [1.5, 1.25]
    assert frame["eval_acc"].iloc[0] == 0.01 and math.isnan(frame["eval_acc"].iloc[1])
    # plain JSON lines a user can open with pandas directly
    import pandas as pd

    direct = pd.read_json(run.path / rundir.METRICS_FILE, lines=True)
    assert direct["l2"].tolist() == [1.5, 1.25]


def test_row_needs_epoch_and_step(tmp_path):
    writer = make_run(tmp_path, rows=0)
    with pytest.raises(rundir.RunDirError, match="needs 'step'"):
        writer.append({"epoch": 1, "l2": 1.0})
    writer.close()


def test_context_manager_marks_failure_and_interrupt(tmp_path):
    with pytest.raises(RuntimeError):
        with make_run(tmp_path, run="bad"):
            raise RuntimeError("boom")
    failed = rundir.summarize_run(tmp_path / "exp" / "bad")
    assert failed.status == "failed" and "boom" in failed.reason and failed.checkpoints == 3

    with pytest.raises(KeyboardInterrupt):
        with make_run(tmp_path, run="stopped"):
            raise KeyboardInterrupt
    stopped = rundir.summarize_run(tmp_path / "exp" / "stopped")
    assert stopped.status == "interrupted" and stopped.checkpoints == 3


def test_diverged_run(tmp_path):
    with make_run(tmp_path) as writer:
        writer.mark_diverged(2)
    summary = rundir.summarize_run(tmp_path / "exp" / "seed-0")
    assert summary.status == "diverged" and "epoch 2" in summary.reason


def test_truncated_last_line_is_ignored(tmp_path):
    writer = make_run(tmp_path)
    writer.close()
    metrics_file = tmp_path / "exp" / "seed-0" / rundir.METRICS_FILE
    with open(metrics_file, "ab") as handle:
        handle.write(b'{"epoch": 3, "step": 30, "l2": 4.')
    frame = rundir.read_metrics(tmp_path / "exp" / "seed-0")
    assert frame["epoch"].tolist() == [0, 1, 2]
    # resuming cuts the half line off and goes on cleanly
    writer = rundir.RunWriter.reopen(tmp_path / "exp" / "seed-0")
    writer.append({"epoch": 3, "step": 30, "l2": 4.0})
    writer.finish()
    frame = rundir.read_metrics(tmp_path / "exp" / "seed-0")
    assert frame["epoch"].tolist() == [0, 1, 2, 3]


def test_reopen_drops_rows_after_saved_state(tmp_path):
    make_run(tmp_path, rows=5).close()
    writer = rundir.RunWriter.reopen(tmp_path / "exp" / "seed-0", keep_through_step=20)
    assert writer.meta["last_checkpoint"] == {"epoch": 2, "step": 20}
    writer.close()
    assert rundir.read_metrics(tmp_path / "exp" / "seed-0")["step"].tolist() == [0, 10, 20]


def test_corrupt_middle_line_is_broken_with_line_number(tmp_path):
    make_run(tmp_path).close()
    metrics_file = tmp_path / "exp" / "seed-0" / rundir.METRICS_FILE
    lines = metrics_file.read_bytes().splitlines(keepends=True)
    lines[1] = b"\x00garbage\n"
    metrics_file.write_bytes(b"".join(lines))
    summary = rundir.summarize_run(tmp_path / "exp" / "seed-0")
    assert summary.broken and "line 2" in summary.reason


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "no meta.json"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"format_version": 99, "status": "running"}', "format_version"),
        (b'{"format_version": 1, "status": "exploded"}', "unknown status"),
    ],
)
def test_corrupt_or_missing_metadata(tmp_path, content, reason):
    make_run(tmp_path).close()
    meta_file = tmp_path / "exp" / "seed-0" / rundir.META_FILE
    if content is None:
        meta_file.unlink()
    else:
        meta_file.write_bytes(content)
    summary = rundir.summarize_run(tmp_path / "exp" / "seed-0")
    assert summary.broken and reason in summary.reason
    with pytest.raises(rundir.RunDirError, match=reason):
        rundir.load_run(tmp_path, "exp", "seed-0")


def test_empty_and_foreign_directories_are_broken(tmp_path):
    (tmp_path / "exp" / "empty").mkdir(parents=True)
    foreign = tmp_path / "exp" / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    runs = {run.run: run for run in rundir.list_runs(tmp_path, "exp")}
    assert runs["empty"].broken and runs["photos"].broken
    assert "not a trainmap run" in runs["empty"].reason


def test_unknown_extra_columns_are_kept(tmp_path):
    writer = make_run(tmp_path, rows=1)
    writer.append({"epoch": 1, "step": 10, "l2": 2.0, "my_custom": 7, "note": "hello"})
    writer.close()
    frame = rundir.read_metrics(tmp_path / "exp" / "seed-0")
    assert frame["my_custom"].tolist()[1] == 7
    assert math.isnan(frame["my_custom"].iloc[0])
    assert "note" in frame.columns  # non-numeric values become NaN, not an error


def test_metadata_with_unknown_fields_still_reads(tmp_path):
    make_run(tmp_path).close()
    meta_file = tmp_path / "exp" / "seed-0" / rundir.META_FILE
    meta = json.loads(meta_file.read_text())
    meta["written_by_a_newer_tool"] = {"x": 1}
    meta_file.write_text(json.dumps(meta))
    assert rundir.load_run(tmp_path, "exp", "seed-0").meta["written_by_a_newer_tool"] == {"x": 1}


@pytest.mark.parametrize(
    "name", ["..", ".", "../x", "/etc", "a/b", "", ".hidden", "-rf", "x" * 200]
)
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(rundir.UnsafePathError):
        rundir.run_path(tmp_path, "exp", name)
    with pytest.raises(rundir.UnsafePathError):
        rundir.RunWriter.create(tmp_path, name, "run", task="toy")


def test_symlink_out_of_root_is_refused(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "exp").mkdir(parents=True)
    make_run(tmp_path, experiment="outside", run="secret").close()
    (root / "exp" / "link").symlink_to(outside / "secret")
    (root / "escaped").symlink_to(outside)
    with pytest.raises(rundir.UnsafePathError, match="outside the root"):
        rundir.load_run(root, "exp", "link")
    with pytest.raises(rundir.UnsafePathError):
        rundir.list_runs(root, "escaped")
    assert "escaped" not in rundir.list_experiments(root)
    listed = rundir.list_runs(root, "exp")
    assert listed[0].broken and "outside the root" in listed[0].reason


def test_state_round_trip_without_pickle(tmp_path):
    make_run(tmp_path).close()
    path = tmp_path / "exp" / "seed-0"
    arrays = {
        "model.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "rng": np.arange(4, dtype=np.uint8),
    }
    rundir.save_state(path, arrays, {"epoch": 2, "step": 20})
    loaded, info = rundir.load_state(path)
    assert info == {"epoch": 2, "step": 20}
    np.testing.assert_array_equal(loaded["model.weight"], arrays["model.weight"])
    # an object array would need pickle: refused on load, in one line naming the run
    np.savez(path / rundir.STATE_DIR / rundir.STATE_ARRAYS, evil=np.array([object()], dtype=object))
    with pytest.raises(rundir.RunDirError, match="exp/seed-0") as caught:
        rundir.load_state(path)
    assert "\n" not in str(caught.value) and "pickle" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip", b"PK\x03\x04broken", b"\x93NUMPY\x01\x00"],
)
def test_unreadable_state_is_a_one_line_error(tmp_path, content):
    make_run(tmp_path).close()
    path = tmp_path / "exp" / "seed-0"
    rundir.save_state(path, {"w": np.zeros(2)}, {"epoch": 2, "step": 20})
    (path / rundir.STATE_DIR / rundir.STATE_ARRAYS).write_bytes(content)
    with pytest.raises(rundir.RunDirError, match="exp/seed-0") as caught:
        rundir.load_state(path)
    assert "\n" not in str(caught.value)


# A save interrupted at its k-th file-system step: every step of save_state goes
# through one of the functions wrapped here, and the process dies (os._exit, as a
# kill -9 would: no cleanup) at step k, after writing half the bytes if it is a write.
KILL_DURING_SAVE = textwrap.dedent(
    """
    import builtins, os, pathlib, sys
    import numpy as np
    from trainmap.trainer import rundir

    path, kill_at = sys.argv[1], int(sys.argv[2])
    count = [0]

    def step():
        count[0] += 1
        return count[0] == kill_at

    def wrap(function):
        def wrapped(*args, **kwargs):
            if step():
                os._exit(9)
            return function(*args, **kwargs)
        return wrapped

    class Handle:
        def __init__(self, handle):
            self.handle = handle
        def write(self, data):
            if step():
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                os._exit(9)
            return self.handle.write(data)
        def __getattr__(self, name):
            return getattr(self.handle, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    real_open = builtins.open
    def opened(*args, **kwargs):
        if step():
            os._exit(9)
        return Handle(real_open(*args, **kwargs))

    builtins.open = opened
    os.fsync = wrap(os.fsync)
    os.replace = wrap(os.replace)
    os.rename = wrap(os.rename)
    pathlib.Path.mkdir = wrap(pathlib.Path.mkdir)
    pathlib.Path.unlink = wrap(pathlib.Path.unlink)
    arrays = {"model.w": np.full(1000, 2.0), "rng": np.arange(3, dtype=np.uint8) + 2}
    rundir.save_state(path, arrays, {"epoch": 2, "step": 20})
    """
)


def test_a_kill_at_any_step_of_a_save_leaves_the_old_or_the_new_state(tmp_path):
    make_run(tmp_path).close()  # rows at epochs 0, 1, 2 (steps 0, 10, 20)
    path = tmp_path / "exp" / "seed-0"
    old = {"model.w": np.full(1000, 1.0), "rng": np.arange(3, dtype=np.uint8) + 1}
    outcomes = []
    for kill_at in range(1, 30):
        rundir.save_state(path, old, {"epoch": 1, "step": 10})
        result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path), str(kill_at)])
        arrays, info = rundir.load_state(path, check_metrics=True)
        # the weights are the ones the epoch says, never new weights with the old epoch
        assert arrays["model.w"][0] == info["epoch"] and arrays["rng"][0] == info["epoch"]
        outcomes.append(info["epoch"])
        if result.returncode == 0:
            break
        assert result.returncode == 9
    assert outcomes[-1] == 2 and result.returncode == 0, "the save never completed"
    assert outcomes[0] == 1 and len(outcomes) >= 5, "the kill should land at several steps"


def test_a_state_of_the_old_layout_interrupted_between_its_files_is_refused(tmp_path):
    make_run(tmp_path).close()
    state_dir = tmp_path / "exp" / "seed-0" / rundir.STATE_DIR
    state_dir.mkdir()
    (state_dir / rundir.STATE_INFO).write_text(
        json.dumps({"info": {"epoch": 1, "step": 10}, "arrays": ["w"]})
    )
    time.sleep(0.01)
    np.savez(state_dir / rundir.STATE_ARRAYS, w=np.ones(2))  # the new arrays landed, not their json
    with pytest.raises(rundir.RunDirError, match="interrupted"):
        rundir.load_state(state_dir.parent)


def test_a_state_that_is_not_a_checkpoint_of_the_metrics_is_refused(tmp_path):
    make_run(tmp_path).close()  # steps 0, 10, 20
    path = tmp_path / "exp" / "seed-0"
    rundir.save_state(path, {"w": np.ones(2)}, {"epoch": 7, "step": 70})
    assert rundir.load_state(path)[1]["epoch"] == 7
    with pytest.raises(rundir.RunDirError, match="epoch 7 step 70, which is not a checkpoint"):
        rundir.load_state(path, check_metrics=True)


def test_stale_running_run_is_interrupted(tmp_path):
    writer = make_run(tmp_path)
    writer.close()
    meta_file = tmp_path / "exp" / "seed-0" / rundir.META_FILE
    meta = json.loads(meta_file.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    meta["writer"]["pid"] = dead.pid
    meta_file.write_text(json.dumps(meta))
    summary = rundir.summarize_run(tmp_path / "exp" / "seed-0")
    assert summary.status == "interrupted" and str(dead.pid) in summary.reason


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from trainmap.trainer import rundir
    writer = rundir.RunWriter.create(sys.argv[1], "exp", "live", task="toy", seed=1)
    for step in range(400):
        writer.append({"epoch": step, "step": step, **{f"m{i}": step * 0.5 for i in range(60)}})
        time.sleep(0.001)
    writer.finish()
    """
)


def test_reader_sees_consistent_prefix_while_another_process_appends(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)])
    path = tmp_path / "exp" / "live"
    seen = []
    try:
        deadline = time.time() + 60
        while process.poll() is None and time.time() < deadline:
            if (path / rundir.META_FILE).exists():
                frame = rundir.read_metrics(path)
                # every row complete, in order, with every column
                assert frame["step"].tolist() == list(range(len(frame)))
                if len(frame):
                    assert frame[[f"m{i}" for i in range(60)]].notna().all().all()
                seen.append(len(frame))
    finally:
        process.wait(timeout=60)
    assert process.returncode == 0
    assert len(set(seen)) > 2, "the reader should have seen the run grow"
    assert len(rundir.read_metrics(path)) == 400


KILLED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from trainmap.trainer import rundir
    writer = rundir.RunWriter.create(sys.argv[1], "exp", "killed", task="toy", seed=2)
    for step in range(5):
        writer.append({"epoch": step, "step": step, "l2": 1.0})
    os.write(writer._fd, b'{"epoch": 5, "step": 5, "l2"')  # the kill lands mid-row
    os.kill(os.getpid(), 9)
    """
)


def test_killed_writer_keeps_completed_checkpoints(tmp_path):
    result = subprocess.run([sys.executable, "-c", KILLED_SCRIPT, str(tmp_path)])
    assert result.returncode == -9
    summary = rundir.summarize_run(tmp_path / "exp" / "killed")
    assert summary.status == "interrupted" and summary.checkpoints == 5


def test_runs_list_shows_good_half_written_and_corrupt(tmp_path):
    with make_run(tmp_path, run="good") as writer:
        writer.append({"epoch": 3, "step": 30, "eval_acc": 0.97})
    result = subprocess.run([sys.executable, "-c", KILLED_SCRIPT, str(tmp_path)])
    assert result.returncode == -9
    os.rename(tmp_path / "exp" / "killed", tmp_path / "exp" / "half")
    make_run(tmp_path, run="corrupt").close()
    (tmp_path / "exp" / "corrupt" / rundir.META_FILE).write_text("{oops")

    text = format_listing(tmp_path)
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert text.splitlines()[0] == "exp  (3 runs, 1 broken)"
    assert "completed" in lines["good"] and "0.970" in lines["good"]
    assert "interrupted" in lines["half"] and " 5 " in lines["half"]
    assert "broken" in lines["corrupt"] and "not valid JSON" in lines["corrupt"]

    cli = subprocess.run(
        [sys.executable, "-m", "trainmap.trainer.cli", "runs", "list", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0 and cli.stdout.strip() == text


def test_runs_list_on_missing_root_is_one_line_error(tmp_path):
    cli = subprocess.run(
        [sys.executable, "-m", "trainmap.trainer.cli", "runs", "list", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().startswith("trainmap runs: error:") and "Traceback" not in cli.stderr


def test_fingerprint_changes_when_a_run_changes(tmp_path):
    writer = make_run(tmp_path)
    before = rundir.experiment_fingerprint(tmp_path, "exp")
    assert rundir.experiment_fingerprint(tmp_path, "exp") == before
    writer.append({"epoch": 9, "step": 90, "l2": 1.0})
    writer.close()
    assert rundir.experiment_fingerprint(tmp_path, "exp") != before


def test_append_frame_writes_the_same_rows_as_append(tmp_path):
    import pandas as pd

    rows = [
        {"epoch": 0, "step": 0, "l2": 1.5, "eval_acc": float("inf")},
        {"epoch": 1, "step": 4, "l2": float("nan"), "eval_acc": 0.5},
    ]
    with rundir.RunWriter.create(tmp_path, "exp", "one-by-one", task="toy") as writer:
        for row in rows:
            writer.append(row)
    with rundir.RunWriter.create(tmp_path, "exp", "at-once", task="toy") as writer:
        # column order of the frame does not matter: epoch and step go first
        writer.append_frame(pd.DataFrame(rows)[["l2", "eval_acc", "step", "epoch"]])
        assert writer.meta["last_checkpoint"] == {"epoch": 1, "step": 4}
    one = rundir.read_metrics(tmp_path / "exp" / "one-by-one")
    many = rundir.read_metrics(tmp_path / "exp" / "at-once")
    pd.testing.assert_frame_equal(one, many)
    assert one["eval_acc"].isna().tolist() == [True, False]
    with pytest.raises(rundir.RunDirError, match="epoch"):
        rundir.RunWriter.create(tmp_path, "exp", "bad", task="toy").append_frame(
            pd.DataFrame({"step": [1]})
        )
