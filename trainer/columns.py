"""The column names of a run's metrics: one torch-free home for trainer, analysis and app.

Every row of ``metrics.jsonl`` (the format is ``trainer.rundir``'s) starts with
the INDEX_COLUMNS; then come the 14 weight statistics of docs/method.md §1
(model-level as ``l2``, per hook point as ``blocks.0.mlp/l2``) and the scalars
the training loop logs. The metric registry (``trainer.metrics``) computes the
statistics under these names and checks at import that it has one function per
name; the analysis takes its default HMM features from here, the glossary
explains each name and the dashboard tells metrics from index columns with them.
"""

INDEX_COLUMNS = ("epoch", "step")
"""Every row's position in its run (both int64); they come first in every row."""

MATRIX_STATISTICS = (
    "l1",
    "l2",
    "code_sparsity",
    "trace",
    "spectral",
    "computational_sparsity",
    "mean_sv",
    "var_sv",
)
"""Statistics of each weight matrix, averaged over the matrices: one column each."""

VALUE_STATISTICS = ("mean", "median", "var")
"""Statistics of all weights (column ``NAME_w``) and of all biases (``NAME_b``)."""

BIAS_COLUMNS = tuple(f"{name}_b" for name in VALUE_STATISTICS)
"""The weight statistics of the biases; absent (NaN) in a model without biases."""

WEIGHT_COLUMNS = (
    *MATRIX_STATISTICS,
    *(f"{name}_w" for name in VALUE_STATISTICS),
    *BIAS_COLUMNS,
)
"""The 14 weight-statistics columns (the paper's HMM features), in docs/method.md order."""

LOOP_COLUMNS = ("train_loss", "eval_loss", "train_acc", "eval_acc")
"""The scalars every built-in task's training loop logs per checkpoint."""

MODULAR_COLUMNS = ("grad_sym", "dist_irr")
"""The modular-addition task's extra scalars: they need the model's forward pass."""

SCALAR_COLUMNS = (*LOOP_COLUMNS, *MODULAR_COLUMNS)
"""The other 6 of the 20 metrics: logged by the training loop, not computed from weights."""
