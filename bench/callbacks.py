"""Benchmark: what trainmap's Lightning and Hugging Face callbacks add per checkpoint.

Run with ``python bench/callbacks.py`` (a few minutes; needs the ``lightning`` and
``hf`` extras). One model for both frameworks: a 4-layer BERT (hidden 128, 4
heads, MLP 512; 0.9 M parameters, ~14 matrices per layer) built from a config,
classifying random sequences of 32 tokens in batches of 16, AdamW, one torch
thread (as a training worker). For each framework, interleaved so the machine's
load hits all alike, it trains ``STEPS`` steps

* **without** the callback (the baseline: the framework's own step), and
* **with** it writing a row at every step (``every_n_steps=1``, the weight
  statistics of every module with weights: the worst case),

and prints, per checkpoint: the time inside the callback's row writing
(``CheckpointRecorder.flush``, measured directly), the end-to-end difference
(with - without) / steps, and both as a ratio of one training step. Minimum
and median over the repeats; ``os.getloadavg()`` with every result.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

STEPS = 40
REPEATS = 5
SEQ, BATCH = 32, 16


def make_model():
    import transformers

    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=SEQ, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=STEPS * BATCH):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 1000, (n, SEQ), generator=generator)
        self.y = (self.x[:, 0] < 500).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def timed_flush(callback, record):
    """Wrap the callback's row writing to time it (the rest of its hooks are bookkeeping)."""
    recorder = callback.recorder
    flush = recorder.flush

    def timed():
        start = time.perf_counter()
        row = flush()
        if row is not None:
            record.append(time.perf_counter() - start)
        return row

    recorder.flush = timed
    return callback


def run_hf(run_dir, with_callback):
    import transformers

    from trainmap.trainer.integrations.hf import TrainmapCallback

    flushes = []
    callbacks = []
    if with_callback:
        callbacks = [timed_flush(TrainmapCallback(run_dir, every_n_steps=1), flushes)]
    args = transformers.TrainingArguments(
        output_dir=str(Path(run_dir).parent / "hf-out"), max_steps=STEPS,
        per_device_train_batch_size=BATCH, save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=make_model(), args=args, train_dataset=Tokens(), callbacks=callbacks
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, flushes


def run_lightning(run_dir, with_callback):
    import lightning.pytorch as L

    from trainmap.trainer.integrations.lightning import TrainmapCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    flushes = []
    callbacks = []
    if with_callback:
        callbacks = [timed_flush(TrainmapCallback(run_dir, every_n_steps=1), flushes)]
    trainer = L.Trainer(
        max_steps=STEPS, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        default_root_dir=str(Path(run_dir).parent / "pl-out"),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(Tokens(), batch_size=BATCH)
    module = Module()
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start, flushes


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)  # the frameworks' banners
    print(f"{STEPS} steps x {REPEATS} repeats per case, 1 torch thread")
    for name, run in (("hf", run_hf), ("lightning", run_lightning)):
        run(tempfile.mkdtemp() + "/e/warm", True)  # imports and first-call costs, not timed
        without, with_, flush = [], [], []
        for _ in range(REPEATS):
            with tempfile.TemporaryDirectory() as tmp:
                without.append(run(f"{tmp}/e/off", False)[0] / STEPS)
                total, flushes = run(f"{tmp}/e/on", True)
                with_.append(total / STEPS)
                flush.extend(flushes)
                assert len(flushes) == STEPS, len(flushes)
        step = statistics.median(without)
        extra = statistics.median(w - o for w, o in zip(with_, without))
        row = statistics.median(flush)
        print(
            f"{name:9s}: step {1e3 * step:6.1f} ms (min {1e3 * min(without):.1f}); "
            f"row writing per checkpoint {1e3 * row:5.1f} ms (min {1e3 * min(flush):.1f}) = "
            f"{row / step:.2f} steps; end to end +{1e3 * extra:5.1f} ms per checkpoint = "
            f"{extra / step:.2f} steps   load average {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
