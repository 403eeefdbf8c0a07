"""The Lightning callback: a LightningModule on random data writes a run trainmap can fit.

Both packages: ``lightning.pytorch`` and the classic ``pytorch_lightning`` (each
Trainer accepts only callbacks of its own package). CPU, offline, a few seconds each.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from trainmap.trainer import Tracker, rundir
from trainmap.trainer.checkpoints import import_checkpoints
from trainmap.trainer.columns import WEIGHT_COLUMNS
from trainmap.trainer.errors import UserError

L = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")
import pytorch_lightning as PL  # noqa: E402 - after the skip: it comes with lightning

from trainmap.trainer.integrations import lightning as integration  # noqa: E402
from trainmap.trainer.integrations import pytorch_lightning as classic  # noqa: E402

PACKAGES = {"lightning.pytorch": (L, integration), "pytorch_lightning": (PL, classic)}
BATCHES = 4  # per epoch: 64 samples in batches of 16
HOOKS = ["net.*"]


def module_class(package):
    class Classifier(package.LightningModule):
        """Two linear layers classifying random points; logs what a typical module logs."""

        def __init__(self, seed: int = 0):
            super().__init__()
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

        def forward(self, x):
            return self.net(x)

        def _step(self, batch, stage):
            x, y = batch
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
            acc = (logits.argmax(-1) == y).float().mean()
            on_step = stage == "train"
            self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
            self.log(f"{stage}_acc", acc, on_step=on_step, on_epoch=True)
            return loss

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    return Classifier


def loaders(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 4, generator=generator)
    y = (x[:, 0] * x[:, 1] > 0).long()  # learnable, not linear
    train = torch.utils.data.TensorDataset(x[:64], y[:64])
    val = torch.utils.data.TensorDataset(x[64:], y[64:])
    make = torch.utils.data.DataLoader
    return make(train, batch_size=16), make(val, batch_size=32)


def fit(package, callback, tmp_path, max_epochs, model=None, ckpt_path=None, checkpoints=False):
    trainer = package.Trainer(
        max_epochs=max_epochs,
        callbacks=[callback]
        + (
            [package.callbacks.ModelCheckpoint(save_top_k=-1, every_n_epochs=1)]
            if checkpoints
            else []
        ),
        logger=False,
        enable_checkpointing=checkpoints,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "lightning",
        accelerator="cpu",
    )
    model = model if model is not None else module_class(package)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "few workers", "small batches": true and harmless
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: two threads on a shared 2-core machine are slower
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", PACKAGES)
def test_a_fit_writes_the_same_columns_as_tracker(name, tmp_path):
    package, callbacks = PACKAGES[name]
    run = tmp_path / "runs" / "clf" / "seed-0"
    callback = callbacks.TrainmapCallback(run, HOOKS, config={"lr": 0.5}, seed=0)
    model = fit(package, callback, tmp_path, max_epochs=3)
    written = rundir.load_run(tmp_path / "runs", "clf", "seed-0")
    assert written.status == "completed"
    assert written.meta["hook_points"] == ["net.0", "net.2"]
    assert written.meta["config"] == {"lr": 0.5} and written.meta["seed"] == 0
    assert written.metrics["epoch"].tolist() == [1, 2, 3]
    assert written.metrics["step"].tolist() == [BATCHES, 2 * BATCHES, 3 * BATCHES]

    # the same model through Tracker by hand: the same columns in the same order,
    # and the last row's weight statistics are the final weights'
    with Tracker(
        copy.deepcopy(model), HOOKS, run_dir=tmp_path / "runs" / "byhand" / "r"
    ) as by_hand:
        row = by_hand.log(3, step=12, train_loss=0.1, train_acc=0.5, eval_loss=0.2, eval_acc=0.5)
    assert list(written.metrics.columns) == list(row)
    last = written.metrics.iloc[-1]
    for column in row:
        if column in WEIGHT_COLUMNS or "/" in column:
            assert last[column] == row[column], column
    assert 0 <= last["eval_acc"] <= 1 and last["train_loss"] > 0


def test_step_cadence_and_the_checkpoint_epoch(tmp_path):
    run = tmp_path / "runs" / "clf" / "steps"
    fit(L, integration.TrainmapCallback(run, HOOKS, every_n_steps=3), tmp_path, max_epochs=3)
    metrics = rundir.read_metrics(run)
    assert metrics["step"].tolist() == [3, 6, 9, 12]
    # completed epochs at that step: 4 batches per epoch, and step 12 ends epoch 3
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]

    run = tmp_path / "runs" / "clf" / "epochs"
    fit(L, integration.TrainmapCallback(run, HOOKS, every_n_epochs=2), tmp_path, max_epochs=5)
    assert rundir.read_metrics(run)["epoch"].tolist() == [2, 4]


def test_resuming_from_a_lightning_checkpoint_appends_without_duplicates(tmp_path):
    """Stopped after 3 epochs, resumed from the checkpoint of epoch 2: the same rows as one fit."""
    whole = tmp_path / "runs" / "clf" / "whole"
    fit(L, integration.TrainmapCallback(whole, HOOKS), tmp_path / "a", max_epochs=4)

    run = tmp_path / "runs" / "clf" / "resumed"
    fit(L, integration.TrainmapCallback(run, HOOKS), tmp_path / "b", 3, checkpoints=True)
    assert rundir.read_metrics(run)["epoch"].tolist() == [1, 2, 3]
    saved = sorted((tmp_path / "b" / "lightning" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in saved] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt",
                                       "epoch=2-step=12.ckpt"]  # fmt: skip
    callback = integration.TrainmapCallback(run, HOOKS)
    fit(L, callback, tmp_path / "b", max_epochs=4, ckpt_path=saved[1])
    assert callback.recorder.resumed_from_step == 8
    resumed = rundir.load_run(tmp_path / "runs", "clf", "resumed")
    assert resumed.status == "completed"
    assert resumed.metrics["step"].tolist() == [4, 8, 12, 16]  # epoch 3 redone, not repeated
    reference = rundir.read_metrics(whole)
    columns = [c for c in reference.columns if c in WEIGHT_COLUMNS or "/" in c]
    assert resumed.metrics[["epoch", "step", *columns]].equals(
        reference[["epoch", "step", *columns]]
    )


def test_lightning_checkpoints_import_to_the_rows_logged_live(tmp_path):
    run = tmp_path / "runs" / "clf" / "live"
    fit(L, integration.TrainmapCallback(run, HOOKS), tmp_path, 3, checkpoints=True)
    folder = tmp_path / "lightning" / "checkpoints"
    imported = import_checkpoints(folder, module_class(L), tmp_path / "runs" / "clf" / "imp", HOOKS)
    assert [c.name for c in imported.imported] == [
        "epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"
    ]  # fmt: skip
    live, again = rundir.read_metrics(run), rundir.read_metrics(imported.path)
    columns = [c for c in again.columns if c in WEIGHT_COLUMNS or "/" in c]
    assert again["step"].tolist() == live["step"].tolist()
    # Lightning names a checkpoint by the 0-based epoch it ends; trainmap counts from 1
    assert again["epoch"].tolist() == [0, 1, 2]
    assert again[columns].equals(live[columns])


def test_task_metrics_and_scalar_names_reach_the_rows(tmp_path):
    seen = []

    def task_metrics(model, epoch, step):
        seen.append((epoch, step))
        return {"first_norm": float(model.net[0].weight.norm())}

    run = tmp_path / "runs" / "clf" / "task"
    callback = integration.TrainmapCallback(
        run, HOOKS, task_metrics=task_metrics, scalars={"eval_acc": "train_acc_epoch"}
    )
    model = fit(L, callback, tmp_path, max_epochs=2)
    metrics = rundir.read_metrics(run)
    assert seen == [(1, 4), (2, 8)]
    assert metrics["first_norm"].iloc[-1] == float(model.net[0].weight.norm())
    assert metrics["eval_acc"].tolist() == metrics["train_acc"].tolist()


def test_a_fresh_fit_into_an_existing_run_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "runs" / "clf" / "seed-0"
    fit(L, integration.TrainmapCallback(run, HOOKS), tmp_path, max_epochs=1)
    with pytest.raises(UserError, match="already exists and this training starts at step 0"):
        fit(L, integration.TrainmapCallback(run, HOOKS), tmp_path, max_epochs=1)
    fit(L, integration.TrainmapCallback(run, HOOKS, overwrite=True), tmp_path, max_epochs=2)
    assert rundir.read_metrics(run)["epoch"].tolist() == [1, 2]


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(UserError, match="not both"):
        integration.TrainmapCallback(tmp_path / "r" / "e" / "x", every_n_epochs=1, every_n_steps=2)
    with pytest.raises(UserError, match="positive integer"):
        integration.TrainmapCallback(tmp_path / "r" / "e" / "x", every_n_steps=0)
    with pytest.raises(rundir.UnsafePathError):
        integration.TrainmapCallback(tmp_path / "r" / "e" / "..")
    with pytest.raises(UserError, match="unknown hook point 'nett'"):
        fit(L, integration.TrainmapCallback(tmp_path / "r" / "e" / "x", ["nett"]), tmp_path, 1)
    assert not (tmp_path / "r" / "e" / "x").exists()


def test_a_failed_fit_marks_the_run_failed(tmp_path):
    class Boom(module_class(L)):
        def on_train_epoch_end(self):
            if self.current_epoch == 1:
                raise RuntimeError("boom")

    run = tmp_path / "runs" / "clf" / "boom"
    with pytest.raises(RuntimeError, match="boom"):
        fit(L, integration.TrainmapCallback(run, HOOKS), tmp_path, 3, model=Boom())
    written = rundir.load_run(tmp_path / "runs", "clf", "boom")
    assert written.status == "failed" and "boom" in written.meta["error"]
    assert written.metrics["epoch"].tolist() == [1, 2]  # the row of epoch 2 came first


def test_an_experiment_of_callback_runs_fits(tmp_path):
    from trainmap import analysis

    root = tmp_path / "runs"
    for seed in range(4):
        # a row per step: enough rows for the HMM's parameters
        callback = integration.TrainmapCallback(
            root / "clf" / f"seed-{seed}", HOOKS, every_n_steps=1, seed=seed
        )
        fit(L, callback, tmp_path, max_epochs=12, model=module_class(L)(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 runs are few for held-out checks, as it says
        result = analysis.fit_experiment(root, "clf", max_states=3, restarts=2, bootstrap=0)
    assert result.runs == [f"seed-{seed}" for seed in range(4)]
    tmap = result.map()
    assert tmap.n_states >= 2 and len(tmap.edges) >= 1
    assert all(len(tmap.paths[run]) == 12 * BATCHES for run in result.runs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")
def test_on_cuda_the_rows_match_cpu(tmp_path):
    rows = {}
    for accelerator in ("cpu", "gpu"):
        run = tmp_path / "runs" / "clf" / accelerator
        trainer = L.Trainer(max_epochs=2, callbacks=[integration.TrainmapCallback(run, HOOKS)],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            accelerator=accelerator, devices=1)  # fmt: skip
        trainer.fit(module_class(L)(), *loaders())
        rows[accelerator] = rundir.read_metrics(run)
    columns = [c for c in rows["cpu"].columns if c in WEIGHT_COLUMNS or "/" in c]
    diff = (rows["gpu"][columns] - rows["cpu"][columns]).abs().to_numpy()
    assert (diff <= 1e-4 * (1 + rows["cpu"][columns].abs().to_numpy())).all()


def test_importing_trainmap_imports_no_framework():
    check = (
        "import sys, trainmap, trainmap.trainer, trainmap.trainer.integrations, "
        "trainmap.trainer.cli, trainmap.trainer.checkpoints_cli; from trainmap import Tracker; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
