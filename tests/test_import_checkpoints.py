"""import-checkpoints: a run directory from a folder of saved state dicts, never unpickling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trainmap.trainer import cli, rundir
from trainmap.trainer.checkpoints import (
    find_checkpoints,
    import_checkpoints,
    load_state_dict,
    parse_position,
)
from trainmap.trainer.columns import WEIGHT_COLUMNS
from trainmap.trainer.errors import UserError
from trainmap.trainer.tasks import get_task
from trainmap.trainer.train import train_run

# Measured on the training set's batches while the weights were changing: no
# checkpoint holds them, so an import cannot recompute them.
LIVE_ONLY = {"train_loss", "train_acc"}


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """modadd tiny, seed 0, trained by the built-in loop while its weights are saved per checkpoint.

    The loop saves the model at every checkpoint (``rundir.save_state``); wrapping
    that call keeps each checkpoint's weights, half as .pt state dicts, half as
    .safetensors, named as training scripts name them.
    """
    tmp = tmp_path_factory.mktemp("live")
    saved = tmp / "ckpts"
    saved.mkdir()
    original = rundir.save_state

    def save_state_and_weights(path, arrays, info):
        original(path, arrays, info)
        weights = {
            name.removeprefix("model."): torch.from_numpy(np.array(value))
            for name, value in arrays.items()
            if name.startswith("model.")
        }
        epoch, step = info["epoch"], info["step"]
        if epoch % 4 == 0:
            save_file(weights, saved / f"epoch={epoch}-step={step}.safetensors")
        else:
            torch.save(weights, saved / f"epoch={epoch}-step={step}.pt")

    config = get_task("modadd").config("tiny", seed=0)
    rundir.save_state = save_state_and_weights
    try:
        train_run(config, tmp / "runs", "live", progress=False)
    finally:
        rundir.save_state = original
    live = rundir.load_run(tmp / "runs", "live", "seed-0").metrics
    return saved, live, tmp


def test_a_saved_series_imports_to_exactly_the_metrics_logged_live(live_run, capsys):
    saved, live, tmp = live_run
    out = tmp / "imported" / "modadd" / "seed-0"
    code = cli.main(
        ["import-checkpoints", str(saved), "--task", "modadd", "--preset", "tiny", "--seed", "0",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "30 checkpoints imported (steps 2 to 60), 0 skipped" in capsys.readouterr().out
    imported = rundir.load_run(tmp / "imported", "modadd", "seed-0")
    assert imported.status == "completed" and imported.meta["task"] == "modadd"
    assert imported.meta["hook_points"] == get_task("modadd").hook_points
    metrics = imported.metrics
    expected_columns = [c for c in live.columns if c not in LIVE_ONLY]
    assert list(metrics.columns) == expected_columns
    assert {"grad_sym", "dist_irr", "eval_acc", "blocks.0.mlp/var_sv"} <= set(expected_columns)
    # Exactly equal, not close: the same weights through the same code, and
    # grad_sym's sample is seeded by the checkpoint's epoch, as live.
    assert metrics[expected_columns].equals(live[expected_columns])


def test_unusable_checkpoints_are_skipped_by_name_and_the_rest_imported(live_run, tmp_path, capsys):
    saved, live, _ = live_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(saved.glob("*.pt"))[:2]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "unpickled"
    torch.save({"weights": Evil(marker)}, folder / "epoch=90-step=90.pt")
    torch.save({"embed.weight": torch.zeros(3, 3)}, folder / "epoch=91-step=91.pt")
    (folder / "epoch=92-step=92.bin").write_bytes(b"not a checkpoint at all")
    (folder / "epoch=93-step=93.safetensors").write_bytes(b"\x00" * 20)
    torch.save({"lr": 0.1}, folder / "epoch=94-step=94.pt")
    (folder / "final.pt").write_bytes(good[0].read_bytes())

    out = tmp_path / "runs" / "mixed" / "seed-0"
    code = cli.main(
        ["import-checkpoints", str(folder), "--task", "modadd", "--preset", "tiny",
         "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert code == 1  # something was skipped: a script can tell
    assert not marker.exists()  # the pickled object was never rebuilt
    reasons = {line.split(":", 1)[0]: line for line in err}
    assert "only pickle can load" in reasons["skipped epoch=90-step=90.pt"]
    assert "does not match the model" in reasons["skipped epoch=91-step=91.pt"]
    assert "unreadable" in reasons["skipped epoch=92-step=92.bin"]
    assert "not a readable .safetensors" in reasons["skipped epoch=93-step=93.safetensors"]
    assert "not a state dict of tensors (e.g. lr" in reasons["skipped epoch=94-step=94.pt"]
    assert "no step or epoch in its name" in reasons["skipped final.pt"]
    assert len(err) == 6  # one line each
    imported = rundir.load_run(tmp_path / "runs", "mixed", "seed-0").metrics
    steps = [int(p.name.split("step=")[1].split(".")[0]) for p in good]
    assert imported["step"].tolist() == steps
    columns = list(WEIGHT_COLUMNS) + ["grad_sym", "eval_acc"]
    expected = live.set_index("step").loc[steps, columns].reset_index(drop=True)
    assert imported[columns].equals(expected)


class Evil:
    """An object that would write a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_no_usable_checkpoint_is_one_error_and_creates_no_run(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "step_1.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"no usable checkpoint .*step_1.pt: unreadable"):
        import_checkpoints(folder, tiny_model, tmp_path / "runs" / "e" / "r")
    assert not (tmp_path / "runs" / "e" / "r").exists()


def tiny_model():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_order_comes_from_the_names():
    assert parse_position("epoch=3-step=400.ckpt") == (3, 400)
    assert parse_position("checkpoint-500") == (500, 500)
    assert parse_position("model_epoch_07.pt") == (7, 7)
    assert parse_position("iter_0100.pth") == (100, 100)
    assert parse_position("weights-0012.bin") == (12, 12)
    assert parse_position("final.pt") is None
    assert parse_position("run2-v3.pt") is None  # two numbers, neither named: ambiguous
    assert parse_position("w-e5-s50.pt", r"e(?P<epoch>\d+)-s(?P<step>\d+)") == (5, 50)
    assert parse_position("w-e5-s50.pt", r"x(?P<step>\d+)") is None


def test_folders_files_and_a_pattern_are_found_in_step_order(tmp_path):
    model = tiny_model()
    for step in (30, 4, 100):
        torch.save(model.state_dict(), tmp_path / f"snap-e{step // 10}-s{step}.pt")
    hf = tmp_path / "checkpoint-7"
    hf.mkdir()
    save_file(model.state_dict(), hf / "model.safetensors")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "logs").mkdir()  # a folder without weights is no checkpoint

    found, skipped = find_checkpoints(tmp_path)
    assert [(c.name, c.epoch, c.step) for c in found] == [("checkpoint-7", 7, 7)]
    assert sorted(name for name, _ in skipped) == sorted(
        f"snap-e{s // 10}-s{s}.pt" for s in (4, 30, 100)
    )

    found, _ = find_checkpoints(tmp_path, r"-e(?P<epoch>\d+)-s(?P<step>\d+)")
    assert [(c.epoch, c.step) for c in found] == [(0, 4), (3, 30), (10, 100)]
    with pytest.raises(UserError, match="named group"):
        find_checkpoints(tmp_path, r"s(\d+)")
    with pytest.raises(UserError, match="not a regular expression"):
        find_checkpoints(tmp_path, r"s(?P<step>\d+")


def test_a_user_model_and_task_metrics_from_a_file(tmp_path, capsys):
    torch.manual_seed(0)
    model = tiny_model()
    folder = tmp_path / "ckpts"
    folder.mkdir()
    expected = []
    for step in (10, 20, 30):
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(0.9)
        torch.save({"state_dict": model.state_dict(), "global_step": step}, folder / f"s{step}.pt")
        expected.append(float(model[0].weight.norm()))
    code_file = tmp_path / "mymodels.py"
    code_file.write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))\n"
        "def metrics(model, epoch, step):\n"
        "    return {'first_norm': float(model[0].weight.norm()), 'twice_step': 2 * step}\n"
    )
    out = tmp_path / "runs" / "mine" / "run-a"
    code = cli.main(
        ["import-checkpoints", str(folder), "--model", f"{code_file}:make",
         "--metrics", f"{code_file}:metrics", "--hook-points", "0,2", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = rundir.load_run(tmp_path / "runs", "mine", "run-a")
    assert run.meta["hook_points"] == ["0", "2"]
    assert run.meta["config"]["imported_from"] == str(folder.resolve())
    assert run.metrics["step"].tolist() == [10, 20, 30]
    assert run.metrics["twice_step"].tolist() == [20, 40, 60]
    assert run.metrics["first_norm"].tolist() == expected
    assert {"l2", "0/l2", "2/spectral"} <= set(run.metrics.columns)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nomodule_xyz:make"], "cannot import nomodule_xyz"),
        (["--model", "json:nothing_here"], "json has no function 'nothing_here'"),
        (["--model", "json"], "must be MODULE:FUNCTION"),
        (["--model", "json:dumps"], "the model factory raised TypeError"),
        (["--task", "modadd", "--preset", "tiny", "--hook-points", "nope"], "unknown hook point"),
        (["--task", "modadd", "--preset", "tiny", "--device", "tpu"], "unknown device 'tpu'"),
        (["--task", "modadd", "--preset", "tiny", "--pattern", "x("], "not a regular expression"),
        (["--model", "json:dumps", "--seed", "3"], "--preset and --seed go with --task"),
    ],
)
def test_bad_arguments_are_one_line_errors(live_run, tmp_path, capsys, args, message):
    saved, _, _ = live_run
    out = tmp_path / "runs" / "x" / "y"
    code = cli.main(["import-checkpoints", str(saved), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_an_existing_run_is_not_overwritten_unless_asked(live_run, tmp_path, capsys):
    saved, _, _ = live_run
    out = tmp_path / "runs" / "x" / "y"
    args = ["import-checkpoints", str(saved), "--task", "modadd", "--preset", "tiny"]
    assert cli.main([*args, "--out", str(out)]) == 0
    before = (out / rundir.METRICS_FILE).read_bytes()
    assert cli.main([*args, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / rundir.METRICS_FILE).read_bytes() == before
    assert cli.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert (out / rundir.METRICS_FILE).read_bytes() == before


def test_load_state_dict_reads_nested_lightning_style_dicts(tmp_path):
    weights = tiny_model().state_dict()
    torch.save({"state_dict": weights, "epoch": 3, "hparams": {"lr": 0.1}}, tmp_path / "a.ckpt")
    loaded = load_state_dict(tmp_path / "a.ckpt")
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")
def test_import_on_cuda_matches_cpu(live_run, tmp_path):
    saved, _, _ = live_run
    rows = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device / "modadd" / "seed-0"
        cli.main(
            ["import-checkpoints", str(saved), "--task", "modadd", "--preset", "tiny",
             "--device", device, "--out", str(out)]
        )  # fmt: skip
        rows[device] = json.loads((out / rundir.METRICS_FILE).read_text().splitlines()[-1])
    for column, value in rows["cpu"].items():
        assert math.isclose(rows["cuda"][column], value, rel_tol=1e-4, abs_tol=1e-6), column
