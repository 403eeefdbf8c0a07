"""The Hugging Face callback: a two-layer BERT built from a config, on random tokens.

No hub download: the model comes from ``BertConfig``, the data from a seeded
generator. CPU, a few seconds per training.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from trainmap.trainer import Tracker, rundir
from trainmap.trainer.checkpoints import import_checkpoints
from trainmap.trainer.columns import WEIGHT_COLUMNS

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

from trainmap.trainer.integrations.hf import TrainmapCallback  # noqa: E402

HOOKS = ["bert.encoder.layer.*.attention.self", "bert.encoder.layer.?.output", "classifier"]
STEPS_PER_EPOCH = 4  # 32 sequences in batches of 8


def make_model(seed: int = 0):
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
        # no dropout: a resumed training then repeats the uninterrupted one exactly
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


class RandomTokens(torch.utils.data.Dataset):
    """Random sequences of 8 tokens; the label is whether the first token is below 25."""

    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, 50, (n, 8), generator=generator)
        self.labels = (self.tokens[:, 0] < 25).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.labels[index]}


def accuracy(prediction):
    return {
        "accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())
    }


def train(callback, tmp_path, epochs, *, model=None, save=False, resume=None, seed=0):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",  # a resumed run's schedule equals the whole run's
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch" if save else "no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = transformers.Trainer(
        model=model if model is not None else make_model(seed),
        args=args,
        train_dataset=RandomTokens(32, seed),
        eval_dataset=RandomTokens(16, seed + 100),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer.model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: two threads on a shared 2-core machine are slower
    yield
    torch.set_num_threads(threads)


def test_a_training_writes_the_same_columns_as_tracker(tmp_path):
    run = tmp_path / "runs" / "bert" / "seed-0"
    model = train(TrainmapCallback(run, HOOKS, config={"lr": 1e-3}, seed=0), tmp_path, 3)
    written = rundir.load_run(tmp_path / "runs", "bert", "seed-0")
    assert written.status == "completed"
    assert written.meta["hook_points"] == [
        "bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self",
        "bert.encoder.layer.0.output", "bert.encoder.layer.1.output", "classifier",
    ]  # fmt: skip
    metrics = written.metrics
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert metrics["step"].tolist() == [4, 8, 12]

    with Tracker(
        copy.deepcopy(model), HOOKS, run_dir=tmp_path / "runs" / "byhand" / "r"
    ) as by_hand:
        row = by_hand.log(3, step=12, train_loss=0.1, eval_loss=0.2, eval_acc=0.5)
    assert list(metrics.columns) == list(row)
    last = metrics.iloc[-1]
    for column in row:
        if column in WEIGHT_COLUMNS or "/" in column:
            assert last[column] == row[column], column
    # the Trainer's own numbers: the epoch's logged loss, evaluation loss and accuracy
    assert metrics["eval_acc"].between(0, 1).all() and (metrics["train_loss"] > 0).all()
    assert metrics["eval_loss"].notna().all() and metrics["eval_loss"].nunique() == 3


def test_step_cadence(tmp_path):
    run = tmp_path / "runs" / "bert" / "steps"
    train(TrainmapCallback(run, HOOKS, every_n_steps=3), tmp_path, 3)
    metrics = rundir.read_metrics(run)
    assert metrics["step"].tolist() == [3, 6, 9, 12]
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    # step 12 ends epoch 3: its row waited for that epoch's evaluation
    assert not np.isnan(metrics["eval_acc"].iloc[-1])


def test_resume_from_checkpoint_appends_without_duplicates(tmp_path):
    """Stopped after 2 epochs, resumed from checkpoint-4: the same rows as 3 epochs in one go."""
    whole = tmp_path / "runs" / "bert" / "whole"
    train(TrainmapCallback(whole, HOOKS), tmp_path / "a", 3)

    run = tmp_path / "runs" / "bert" / "resumed"
    train(TrainmapCallback(run, HOOKS), tmp_path / "b", 2, save=True)
    assert rundir.read_metrics(run)["step"].tolist() == [4, 8]
    callback = TrainmapCallback(run, HOOKS)
    train(callback, tmp_path / "b", 3, save=True, resume=tmp_path / "b" / "hf" / "checkpoint-4")
    assert callback.recorder.resumed_from_step == 4
    resumed = rundir.load_run(tmp_path / "runs", "bert", "resumed")
    assert resumed.status == "completed"
    assert resumed.metrics["step"].tolist() == [4, 8, 12]  # epoch 2 redone, not repeated
    reference = rundir.read_metrics(whole)
    columns = [c for c in reference.columns if c in WEIGHT_COLUMNS or "/" in c]
    columns += ["eval_loss", "eval_acc"]
    # exactly: the Trainer restores weights, optimizer, data order and RNG states
    assert resumed.metrics[columns].equals(reference[columns])


def test_checkpoint_folders_import_to_the_rows_logged_live(tmp_path):
    run = tmp_path / "runs" / "bert" / "live"
    train(TrainmapCallback(run, HOOKS), tmp_path, 3, save=True)
    folder = tmp_path / "hf"
    imported = import_checkpoints(folder, make_model, tmp_path / "runs" / "bert" / "imp", HOOKS)
    assert [c.name for c in imported.imported] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    live, again = rundir.read_metrics(run), rundir.read_metrics(imported.path)
    columns = [c for c in again.columns if c in WEIGHT_COLUMNS or "/" in c]
    assert again["step"].tolist() == live["step"].tolist()
    assert again[columns].equals(live[columns])


def test_an_experiment_of_callback_runs_fits(tmp_path):
    from trainmap import analysis

    root = tmp_path / "runs"
    for seed in range(4):
        # a row per step: enough rows for the HMM's parameters
        callback = TrainmapCallback(root / "bert" / f"seed-{seed}", HOOKS, every_n_steps=1)
        train(callback, tmp_path / f"s{seed}", 8, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 runs are few for held-out checks, as it says
        result = analysis.fit_experiment(root, "bert", max_states=3, restarts=2, bootstrap=0)
    assert result.runs == [f"seed-{seed}" for seed in range(4)]
    tmap = result.map()
    assert tmap.n_states >= 2 and len(tmap.edges) >= 1
    assert all(len(tmap.paths[run]) == 8 * STEPS_PER_EPOCH for run in result.runs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")
def test_on_cuda_the_rows_match_cpu(tmp_path):
    rows = {}
    for device in ("cpu", "cuda"):
        run = tmp_path / "runs" / "bert" / device
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / device), num_train_epochs=2, per_device_train_batch_size=8,
            learning_rate=1e-3, save_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=device == "cpu",
        )  # fmt: skip
        transformers.Trainer(
            model=make_model(), args=args, train_dataset=RandomTokens(32, 0),
            callbacks=[TrainmapCallback(run, HOOKS)],
        ).train()  # fmt: skip
        rows[device] = rundir.read_metrics(run)
    columns = [c for c in rows["cpu"].columns if c in WEIGHT_COLUMNS or "/" in c]
    assert np.allclose(rows["cuda"][columns], rows["cpu"][columns], rtol=1e-3, atol=1e-5)
