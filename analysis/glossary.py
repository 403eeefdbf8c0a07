"""What every metric column means, in words: one glossary for the CLI and the dashboard.

The trainer writes the 14 weight statistics of docs/method.md §1 once for all hook
points together (``l2``) and once per hook point (``blocks.0.mlp/l2``), plus the
scalars a training loop logs (``eval_acc``). :func:`describe` turns any such
column into a display name, a one-line definition and a unit, so a table, a
tooltip or a hover panel never shows a bare id without its meaning.

Torch-free and import-cheap: ``trainmap glossary`` and the dashboard both read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainmap.trainer.columns import MATRIX_STATISTICS, SCALAR_COLUMNS, VALUE_STATISTICS


@dataclass(frozen=True)
class Entry:
    """One metric: ``short`` fits a node caption, ``name`` a legend, ``definition`` a tooltip."""

    column: str
    short: str
    name: str
    definition: str
    unit: str = ""  # "" where the value has no unit (a ratio, a count of matrices, ...)


# Weight statistics (docs/method.md §1), averaged over the K weight matrices of the hook points.
_MATRIX = {
    "l1": ("L1", "L1 norm", "sum of absolute weights of a matrix"),
    "l2": ("L2", "L2 (Frobenius) norm", "square root of the sum of squared weights of a matrix"),
    "code_sparsity": (
        "code sparsity",
        "code sparsity (L1/L2)",
        "L1 over L2 norm per matrix: low when a few weights carry the matrix",
    ),
    "trace": ("trace", "trace", "sum of a matrix's main diagonal"),
    "spectral": (
        "spectral norm",
        "spectral norm",
        "largest singular value of a matrix: its largest stretch of any input",
    ),
    "computational_sparsity": (
        "comp. sparsity",
        "computational sparsity (trace/spectral)",
        "trace over spectral norm per matrix",
    ),
    "mean_sv": ("mean SV", "mean singular value", "mean of a matrix's singular values"),
    "var_sv": (
        "SV variance",
        "singular value variance",
        "variance of a matrix's singular values (high: a few directions dominate)",
    ),
}
_VALUES = {
    "mean": ("mean", "mean of all"),
    "median": ("median", "median of all"),
    "var": ("variance", "variance (ddof=0) of all"),
}
_KIND = {"w": ("weight", "weights"), "b": ("bias", "biases")}

_SCALARS = {
    "train_loss": (
        "train loss",
        "train loss",
        "mean of the task's loss over the training epoch",
        "",
    ),
    "eval_loss": ("eval loss", "eval loss", "mean of the task's loss on the evaluation set", ""),
    "train_acc": ("train acc", "train accuracy", "share of training examples right", "fraction"),
    "eval_acc": ("eval acc", "eval accuracy", "share of evaluation examples right", "fraction"),
    "grad_sym": (
        "grad symmetry",
        "gradient symmetry",
        "modular arithmetic: mean cosine similarity of a correct logit's gradients "
        "with respect to the two input embeddings",
        "",
    ),
    "dist_irr": (
        "dist. irregularity",
        "distance irregularity",
        "modular arithmetic: mean per-column std of the correct-answer logits over "
        "the std of all of them",
        "",
    ),
}


def _base_entries() -> dict[str, Entry]:
    # Keyed by trainer.columns' names: a column without words here fails at import.
    entries = {}
    for column in MATRIX_STATISTICS:
        short, name, definition = _MATRIX[column]
        entries[column] = Entry(column, short, name, definition + ", averaged over matrices")
    for value in VALUE_STATISTICS:
        word, phrase = _VALUES[value]
        for suffix, (kind, kinds) in _KIND.items():
            column = f"{value}_{suffix}"
            entries[column] = Entry(
                column, f"{kind} {word}", f"{kind} {word}", f"{phrase} {kinds} concatenated"
            )
    for column in SCALAR_COLUMNS:
        short, name, definition, unit = _SCALARS[column]
        entries[column] = Entry(column, short, name, definition, unit)
    return entries


ENTRIES: dict[str, Entry] = _base_entries()
"""Model-level columns: the 14 weight statistics and the logged scalars."""

TERMS = {
    "z": (
        "z: a feature in standard deviations from its mean; the fit z-scores each "
        "feature over all runs' checkpoints (or per run with --normalize per_run), so "
        "+1 z is one standard deviation above average"
    ),
    "convergence epoch": (
        "convergence epoch: the epoch of the first checkpoint at which a run's eval "
        "accuracy reaches the fit's threshold (default 0.9); a run that never does is "
        "'never converged' (censored)"
    ),
    "state": (
        "state (phase): a stretch of training whose weight statistics look alike; "
        "the HMM assigns every checkpoint of every run to one"
    ),
    "transition probability": (
        "transition probability: the chance of moving from one state to another "
        "between two consecutive checkpoints"
    ),
}


def describe(column: str) -> Entry:
    """The entry for any column: model-level, ``HOOK/metric`` or unknown (named as is)."""
    hook, _, metric = column.rpartition("/")
    base = ENTRIES.get(metric)
    if base is None:
        return Entry(column, column, column, "logged by the training loop (not in the glossary)")
    if not hook:
        return base
    return Entry(
        column,
        f"{base.short} ({hook})",
        f"{base.name}, {hook}",
        f"{base.definition}; module {hook} only",
        base.unit,
    )


def short_name(column: str) -> str:
    return describe(column).short


def tooltip(column: str) -> str:
    """One line for a title attribute: name, definition and unit."""
    entry = describe(column)
    unit = f" [{entry.unit}]" if entry.unit else ""
    return f"{entry.name}{unit}: {entry.definition} (column {column})"


def hook_point(column: str) -> str:
    """The hook point a column belongs to, "" for model-level columns."""
    return column.rpartition("/")[0]


def grouped(columns: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Columns grouped by hook point: model-level first, then hooks in first-seen order."""
    groups: dict[str, list[str]] = {"": []}
    for column in columns:
        groups.setdefault(hook_point(column), []).append(column)
    return [(hook, cols) for hook, cols in groups.items() if cols]


def format_glossary(columns: Iterable[str] | None = None) -> str:
    """The glossary as text (``trainmap glossary``): terms, then one line per metric."""
    lines = ["Terms:"] + [f"  {text}" for text in TERMS.values()] + ["", "Metrics:"]
    for column in columns if columns is not None else ENTRIES:
        entry = describe(column)
        unit = f" [{entry.unit}]" if entry.unit else ""
        lines.append(f"  {column:<24} {entry.name}{unit}: {entry.definition}")
    lines += [
        "",
        "Per hook point: HOOK/metric is the same statistic over that module's weights only",
        "(e.g. blocks.0.mlp/l2).",
    ]
    return "\n".join(lines)


# ``trainmap glossary``: a subcommand (trainer.cli) with no options.


def add_arguments(parser) -> None:
    parser.add_argument(
        "columns", nargs="*", help="columns to explain (default: every model-level metric)"
    )


def main(args) -> int:
    print(format_glossary(args.columns or None))
    return 0
