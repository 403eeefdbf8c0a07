"""The metric registry: weight statistics per checkpoint, exactly as docs/method.md §1 defines them.

Two kinds of small pure functions, each registered by a decorator, so adding a
metric is adding one function:

* **matrix metrics** take a checkpoint's :class:`Matrices` (every matrix's
  entries and singular values) and return one value per matrix ``(V,)``; the
  column is the average over all matrices (``l1``, ``spectral``, ...). A metric
  built from others (the sparsities) asks for them, ``m.metric(l1)``, so each
  is computed once;
* **value metrics** take a group's :class:`Values` (all its weights, or all its
  biases) and return a number (``mean_w``, ``mean_b``).

A function's name is its column's; ``trainer.columns`` lists the same names
without torch, for the analysis and the dashboard (tests/test_metrics.py checks
that the two agree).

:class:`WeightMetrics` finds the matrices and biases of the chosen hook points
once, then on every call computes the singular values of every matrix ONCE
(from its float64 Gram matrix, see ``_singular_values``), batched across
matrices of the same shape (a matrix and its transpose have the same singular
values, l1, l2 and main diagonal, so ``(512, 128)`` and ``(128, 512)`` share a
batch), and every metric once for all matrices: a few hundred tensor operations
a checkpoint, not a few per matrix. The weights are read as few times as
possible: each parameter's sum and sum of squares (the Gram matrix's trace) are
computed once and give the mean and variance of every group it belongs to
(model level and hook point, merged with Chan's formula); only the medians need
the values themselves. It writes the model-level columns (``l2``) and, per hook
point, ``HOOK/l2``. Non-finite weights give NaN for every column and
``finite=False``; they never reach LAPACK (which may fail or hang on NaN).

``grad_sym`` and ``dist_irr`` are modular-arithmetic metrics: they need the
model's forward pass, not just its weights, so they are plain functions below
that the modular-addition task calls.

This module imports torch; ``trainer.rundir`` and the CLI modules do not.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg.blas import dasum
from torch import Tensor, nn

from trainmap.trainer.columns import WEIGHT_COLUMNS
from trainmap.trainer.errors import UserError

__all__ = [
    "MATRIX_METRICS",
    "VALUE_METRICS",
    "HookPointError",
    "WeightMetrics",
    "resolve_hook_points",
    "grad_sym",
    "dist_irr",
]

MatrixMetric = Callable[["Matrices"], Tensor]  # -> (V,) float64, one value per matrix
ValueMetric = Callable[["Values"], float]

MATRIX_METRICS: dict[str, MatrixMetric] = {}
VALUE_METRICS: dict[str, ValueMetric] = {}


def matrix_metric(fn: MatrixMetric) -> MatrixMetric:
    """Register ``fn(matrices: Matrices) -> (V,)`` under its name."""
    MATRIX_METRICS[fn.__name__] = fn
    return fn


def value_metric(fn: ValueMetric) -> ValueMetric:
    """Register ``fn(values: Values) -> float``; it becomes columns ``NAME_w`` and ``NAME_b``."""
    VALUE_METRICS[fn.__name__] = fn
    return fn


def _sums_of_abs(batch: Tensor) -> Tensor:
    """Sum of the absolute entries of each matrix of a ``(G, m, n)`` float64 batch.

    On the CPU by BLAS's dasum: one pass and no temporary ``|batch|``, four times
    faster than ``batch.abs().sum(...)`` at the paper model's size.
    """
    if batch.device.type != "cpu":
        return batch.abs().sum(dim=(-2, -1))
    return torch.tensor(
        [dasum(matrix.reshape(-1)) for matrix in batch.numpy()], dtype=torch.float64
    )


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, and 0 where the denominator is 0 (an all-zero matrix).

    Both norms of a matrix are 0 only together, so 0 / 0 (NaN) is the only case.
    """
    return (numerator / denominator).nan_to_num(nan=0.0)


# ----------------------------------------------------------- matrix metrics


class Matrices:
    """Every matrix of a checkpoint (V of them, heads counted apart), float64.

    ``batches`` hold the entries, one tensor ``(G, m, n)`` per shape with m >= n
    (a wide matrix as its transpose: every metric here is the same for both);
    ``each(fn)`` applies ``fn`` to every batch and returns the ``(V,)`` results,
    matrices in batch order. ``singular_values`` is ``(V, k)`` in the same order:
    each matrix's, descending (``[:, 0]`` is the largest), then NaN up to the
    widest matrix's count, so reductions over them are the nan-aware ones.
    ``metric(fn)`` is ``fn(self)``, computed once, for metrics built from others.
    """

    def __init__(self, batches: list[Tensor], singular_values: Tensor):
        self.batches = batches
        self.singular_values = singular_values
        self._computed: dict[MatrixMetric, Tensor] = {}

    def each(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return torch.cat([fn(batch) for batch in self.batches])

    def metric(self, fn: MatrixMetric) -> Tensor:
        if fn not in self._computed:
            self._computed[fn] = fn(self)
        return self._computed[fn]


@matrix_metric
def l1(m: Matrices) -> Tensor:
    return m.each(_sums_of_abs)


@matrix_metric
def l2(m: Matrices) -> Tensor:
    # The Frobenius norm, from the singular values (sum of squares = sum of sigma^2):
    # no second pass over the weights.
    return m.singular_values.square().nansum(dim=-1).sqrt()


@matrix_metric
def code_sparsity(m: Matrices) -> Tensor:
    return _ratio(m.metric(l1), m.metric(l2))


@matrix_metric
def trace(m: Matrices) -> Tensor:
    # the first min(rows, cols) entries of the main diagonal
    return m.each(lambda w: w.diagonal(dim1=-2, dim2=-1).sum(dim=-1))


@matrix_metric
def spectral(m: Matrices) -> Tensor:
    return m.singular_values[:, 0]  # the 2-norm, from the same decomposition: no second one


@matrix_metric
def computational_sparsity(m: Matrices) -> Tensor:
    return _ratio(m.metric(trace), m.metric(spectral))


@matrix_metric
def mean_sv(m: Matrices) -> Tensor:
    return m.singular_values.nanmean(dim=-1)


@matrix_metric
def var_sv(m: Matrices) -> Tensor:
    deviations = m.singular_values - m.metric(mean_sv)[:, None]
    return deviations.square().nanmean(dim=-1)  # ddof=0, as defined (not Bessel's)


# ------------------------------------------------------------ value metrics


@dataclass(frozen=True)
class Moments:
    """Count, float64 sum and float64 sum of squared deviations of some values.

    Moments of disjoint sets merge exactly (Chan, Golub and LeVeque's pairwise
    update), so every parameter is summed once and each group's mean and
    variance come from its parameters' moments.
    """

    count: int = 0
    total: float = 0.0
    centred_squares: float = 0.0

    def __add__(self, other: Moments) -> Moments:
        if not (self.count and other.count):
            return self if self.count else other
        count = self.count + other.count
        delta = other.total / other.count - self.total / self.count
        spread = delta * delta * self.count * other.count / count
        return Moments(
            count, self.total + other.total, self.centred_squares + other.centred_squares + spread
        )


@dataclass
class Values:
    """All weights (or all biases) of one group: their moments, and the values themselves.

    ``parts`` are the group's parameters, flat: numpy views of the weights on the
    CPU, tensors on another device (a GPU).
    """

    parts: list[np.ndarray] | list[Tensor]
    moments: Moments

    @property
    def count(self) -> int:
        return self.moments.count


@value_metric
def mean(values: Values) -> float:
    return values.moments.total / values.count


@value_metric
def median(values: Values) -> float:
    # The average of the two middle values for an even count, as the definition
    # (and numpy) says; torch.median would return the lower one. One O(n)
    # partition puts the upper middle value in place with everything smaller
    # before it, so the lower middle value is the largest of those.
    if isinstance(values.parts[0], Tensor):
        return _median_on_device(torch.cat(values.parts))
    # partition in place, on a copy (never on the weights)
    flat = np.concatenate(values.parts) if len(values.parts) > 1 else values.parts[0].copy()
    n = flat.size
    upper = n // 2
    flat.partition(upper)
    lower = flat[upper] if n % 2 else flat[:upper].max()
    return (float(lower) + float(flat[upper])) / 2


@value_metric
def var(values: Values) -> float:
    return values.moments.centred_squares / values.count  # ddof=0


def _flat_values(tensor: Tensor) -> np.ndarray | Tensor:
    """A tensor's values, flat: a numpy view on the CPU (bfloat16, which numpy lacks, as
    float32), the tensor itself elsewhere."""
    if tensor.device.type != "cpu":
        return tensor.reshape(-1)
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.reshape(-1).numpy()


def _median_on_device(values: Tensor) -> float:
    """The same median where the weights are (a GPU): two order statistics, no copy to the CPU."""
    n = values.numel()
    lower = values.kthvalue((n + 1) // 2).values  # k counts from 1
    upper = values.kthvalue(n // 2 + 1).values
    return float((lower.double() + upper.double()) / 2)


def _moments(values: Tensor) -> Moments:
    """Moments of a tensor's values, in float64 (float32 values are exact in it)."""
    exact = values.reshape(-1).double()
    total = exact.sum()
    centred = exact - total / exact.numel()
    return Moments(exact.numel(), float(total), float(centred.dot(centred)))


# Sum of squares minus total^2 / count loses about eps * squares / centred_squares
# relative: below this ratio of centred_squares to squares (a matrix whose
# entries are nearly all equal) the deviations are summed directly.
CANCELLATION_RATIO = 1e-6


# ------------------------------------------------------- finding the weights


class HookPointError(UserError, ValueError):
    """A hook point does not name a module of the model, or the module has no weights."""


def resolve_hook_points(
    model: nn.Module, patterns: Iterable[str] | None, include_gains: bool = False
) -> list[str]:
    """Expand hook-point names and globs into module names, in model order.

    ``None`` means every module that directly owns a matrix or a bias. An unknown name
    raises HookPointError listing close matches (or the valid names); a glob
    must match at least one module with weights.
    """
    modules = dict(model.named_modules())
    with_weights = [
        name
        for name, module in modules.items()
        if name and _owned_parameters(module, include_gains)
    ]
    if patterns is None:
        direct = [
            name
            for name, module in modules.items()
            if name
            and any(_kind(n, p, include_gains) for n, p in module.named_parameters(recurse=False))
        ]
        if not (direct or with_weights):
            raise HookPointError(
                "the model has no submodule with weights to use as a hook point "
                "(wrap a bare layer in nn.Sequential)"
            )
        return direct or with_weights
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matched = [name for name in with_weights if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise HookPointError(
                    f"hook point pattern {pattern!r} matches no module with weights; "
                    f"valid names: {_listing(with_weights)}"
                )
        elif pattern in modules:
            if not _owned_parameters(modules[pattern], include_gains):
                raise HookPointError(
                    f"hook point {pattern!r} has no weights (a {type(modules[pattern]).__name__} "
                    f"owns no matrices or biases); modules with weights: {_listing(with_weights)}"
                )
            matched = [pattern]
        else:
            close = difflib.get_close_matches(pattern, [n for n in modules if n], n=5)
            hint = f"did you mean {', '.join(close)}?" if close else ""
            raise HookPointError(
                f"unknown hook point {pattern!r}; {hint + ' ' if hint else ''}"
                f"valid names: {_listing(with_weights)}"
            )
        chosen.extend(name for name in matched if name not in chosen)
    return chosen


def _listing(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _owned_parameters(module: nn.Module, include_gains: bool = False) -> list[tuple[str, Tensor]]:
    """(name, parameter) pairs of ``module`` (recursively) that are matrices or biases."""
    owned = []
    for name, param in module.named_parameters():
        if _kind(name, param, include_gains) is not None:
            owned.append((name, param))
    return owned


def _kind(name: str, param: Tensor, include_gains: bool) -> str | None:
    """'bias', 'matrix', 'gain' (a 1-D non-bias, only if asked for) or None (ignored)."""
    if name.rsplit(".", 1)[-1] == "bias":
        return "bias"
    if param.dim() >= 2:
        return "matrix"
    if include_gains and param.dim() == 1:
        return "gain"
    return None


@dataclass
class _Matrix:
    """One parameter as matrices for the metrics: conv kernels flattened, maybe split per head."""

    index: int  # the parameter's position in ``WeightMetrics.parameters`` (and in a snapshot)
    heads: int = 1  # split into this many matrices along ``head_dim``
    head_dim: int = 0

    def views(self, tensors: list[Tensor]) -> list[Tensor]:
        w = tensors[self.index]
        w = w.reshape(w.shape[0], -1)  # conv (out, in, kh, kw) -> (out, in*kh*kw)
        if self.heads == 1:
            return [w]
        return list(w.chunk(self.heads, dim=self.head_dim))


class WeightMetrics:
    """Computes the 14 weight-statistics columns for a model's hook points.

    ``split_heads`` maps a parameter name (``blocks.0.attn.q.weight``) to a head
    count, or to ``(heads, dim)`` to split along columns (``dim=1``, for an output
    projection); each head is then a matrix of its own. ``include_gains`` adds
    1-D non-bias parameters (norm gains) to the weight distribution (``mean_w``
    etc.); they are never matrices.

    ``compute()`` reads the live weights. To compute elsewhere (another thread)
    while training goes on, take ``snapshot()`` (a copy of the weights, the only
    part that must happen between optimizer steps) and pass it to
    ``compute(snapshot)``: the numbers are the same.
    """

    def __init__(
        self,
        model: nn.Module,
        hook_points: Iterable[str] | None = None,
        *,
        split_heads: Mapping[str, int | tuple[int, int]] | None = None,
        include_gains: bool = False,
    ):
        self.hook_points = resolve_hook_points(model, hook_points, include_gains)
        modules = dict(model.named_modules())
        split_heads = dict(split_heads or {})
        names = {id(p): n for n, p in model.named_parameters()}
        unknown = sorted(set(split_heads) - set(names.values()))
        if unknown:
            raise HookPointError(f"split_heads names unknown parameters: {', '.join(unknown)}")

        # Every parameter of the hook points once, in order; the groups below hold
        # positions in this list (a parameter owned by two hook points, ``blocks.0``
        # and ``blocks.0.mlp``, counts once at model level).
        kinds: dict[int, str] = {}
        self.parameters: list[Tensor] = []
        for hook in self.hook_points:
            for _, param in _owned_parameters(modules[hook], include_gains):
                if id(param) not in kinds:
                    kinds[id(param)] = _kind(names[id(param)], param, include_gains)
                    self.parameters.append(param)
        position = {id(p): i for i, p in enumerate(self.parameters)}
        matrices: dict[int, _Matrix] = {}
        for param in self.parameters:
            if kinds[id(param)] == "matrix":
                full_name = names[id(param)]
                heads, dim = _heads(split_heads.get(full_name, 1))
                if param.shape[dim] % heads:
                    raise HookPointError(
                        f"cannot split {full_name} {tuple(param.shape)} into {heads} heads"
                    )
                matrices[id(param)] = _Matrix(position[id(param)], heads, dim)

        def group(params: Iterable[Tensor]) -> tuple[list[_Matrix], list[int], list[int]]:
            """(matrices, weight positions, bias positions) of some parameters."""
            params = list(params)
            return (
                [matrices[id(p)] for p in params if id(p) in matrices],
                [position[id(p)] for p in params if kinds[id(p)] in ("matrix", "gain")],
                [position[id(p)] for p in params if kinds[id(p)] == "bias"],
            )

        self._model_level = group(self.parameters)
        self._per_hook = {
            hook: group(p for _, p in _owned_parameters(modules[hook], include_gains))
            for hook in self.hook_points
        }
        # Views (a matrix, or a head of one) are measured in batches of one tall
        # shape; the shapes are the parameters', fixed here once. ``_batch_views``
        # lists each batch's views (positions in the model-level views order), and
        # every per-view table below is in the batches' order.
        detached = [p.detach() for p in self.parameters]
        views = [view for m in self._model_level[0] for view in m.views(detached)]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for position, view in enumerate(views):
            by_shape.setdefault(tuple(sorted(view.shape, reverse=True)), []).append(position)
        self._batch_views = list(by_shape.values())
        order = {view: row for row, view in enumerate(v for b in self._batch_views for v in b)}
        first_view, start = {}, 0
        for m in self._model_level[0]:
            first_view[m.index] = start
            start += m.heads
        # the rows of each matrix parameter's views (its heads)
        self._view_rows = {
            m.index: [order[first_view[m.index] + h] for h in range(m.heads)]
            for m in self._model_level[0]
        }
        # (groups, views): row g averages the matrix views of group g (model level
        # first, then the hook points); a group without matrices gets NaN.
        self._averaging = torch.zeros(1 + len(self._per_hook), start, dtype=torch.float64)
        for g, (hook_matrices, _, _) in enumerate([self._model_level, *self._per_hook.values()]):
            rows = [r for m in hook_matrices for r in self._view_rows[m.index]]
            self._averaging[g, rows] = 1 / len(rows) if rows else 0.0
            if not rows:
                self._averaging[g] = math.nan

    @property
    def n_matrices(self) -> int:
        """How many matrices the model-level columns average over (heads counted apart)."""
        return sum(m.heads for m in self._model_level[0])

    def is_finite(self, snapshot: list[Tensor] | None = None) -> bool:
        """No NaN or Inf among the live weights (or in a ``snapshot()``)."""
        return _all_finite([p.detach() for p in self.parameters] if snapshot is None else snapshot)

    def snapshot(self) -> list[Tensor]:
        """A copy of the hook points' weights, for ``compute(snapshot)`` later or elsewhere."""
        return [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def compute(self, snapshot: list[Tensor] | None = None) -> tuple[dict[str, float], bool]:
        """Return (columns, finite): model-level and ``HOOK/metric`` columns.

        Of the live weights, or of a ``snapshot()``. With any non-finite weight
        every column is NaN and ``finite`` is False (so are float64 weights beyond
        ~1e154, whose squares overflow: no statistic of them is a number either).
        """
        tensors = [p.detach() for p in self.parameters] if snapshot is None else snapshot
        groups = [("", self._model_level)]
        groups += [(f"{hook}/", parts) for hook, parts in self._per_hook.items()]
        views = [view for m in self._model_level[0] for view in m.views(tensors)]
        batches = [_Batch([_tall(views[i]) for i in positions]) for positions in self._batch_views]
        moments = self._parameter_moments(tensors, batches)
        # A NaN or Inf weight makes its parameter's sums non-finite: this is the
        # finiteness check, before anything reaches LAPACK.
        if not all(math.isfinite(m.total + m.centred_squares) for m in moments):
            nan = float("nan")
            return {prefix + col: nan for prefix, _ in groups for col in WEIGHT_COLUMNS}, False

        # (views, metrics); then every group's columns at once: the average over
        # its matrices is one product.
        if batches:
            matrices = Matrices([b.matrices for b in batches], _singular_values(batches))
            table = torch.stack([matrices.metric(fn) for fn in MATRIX_METRICS.values()], dim=1)
            averages = (self._averaging @ table.cpu()).tolist()  # (groups, metrics)
        else:  # no matrix at all (a norm layer's gain): nothing to average
            averages = [[math.nan] * len(MATRIX_METRICS) for _ in groups]
        flat = [_flat_values(t) for t in tensors]
        # Groups of the same parameters (the model's biases often all sit in one
        # hook point) share their statistics.
        statistics: dict[tuple[int, ...], list[float]] = {(): [math.nan] * len(VALUE_METRICS)}
        row: dict[str, float] = {}
        for (prefix, (_, weights, biases)), means in zip(groups, averages):
            row.update((prefix + name, value) for name, value in zip(MATRIX_METRICS, means))
            for suffix, positions in (("w", weights), ("b", biases)):
                key = tuple(positions)
                if key not in statistics:
                    values = Values(
                        [flat[i] for i in key], sum((moments[i] for i in key), Moments())
                    )
                    statistics[key] = [fn(values) for fn in VALUE_METRICS.values()]
                row.update(
                    (f"{prefix}{name}_{suffix}", value)
                    for name, value in zip(VALUE_METRICS, statistics[key])
                )
        return row, True

    def _parameter_moments(self, tensors: list[Tensor], batches: list[_Batch]) -> list[Moments]:
        """Moments of every parameter: a matrix's from its views' batch sums, others directly."""
        views: list[Moments] = []
        for batch in batches:
            count = batch.matrices[0].numel()
            totals, squares = batch.totals.tolist(), batch.squares.tolist()
            for g, (total, sum_of_squares) in enumerate(zip(totals, squares)):
                centred = sum_of_squares - total * total / count
                if not centred >= CANCELLATION_RATIO * sum_of_squares:  # NaN too: computed anew
                    deviations = batch.matrices[g] - total / count
                    centred = float(deviations.square().sum())
                views.append(Moments(count, total, centred))
        return [
            sum((views[r] for r in self._view_rows[i]), Moments())
            if i in self._view_rows
            else _moments(tensor)
            for i, tensor in enumerate(tensors)
        ]


def _heads(spec: int | tuple[int, int]) -> tuple[int, int]:
    return (spec, 0) if isinstance(spec, int) else (int(spec[0]), int(spec[1]))


def _all_finite(tensors: list[Tensor]) -> bool:
    """No NaN or Inf in any tensor.

    A float64 sum of float32 (or narrower) values cannot overflow, so it is
    finite exactly when every value is: one cheap pass instead of isfinite's
    boolean tensor. Wider dtypes could overflow a finite sum, so they are checked
    value by value.
    """
    for t in tensors:
        if t.dtype.itemsize < 8 and t.is_floating_point():
            if not math.isfinite(t.sum(dtype=torch.float64)):
                return False
        elif not bool(torch.isfinite(t).all()):
            return False
    return True


class _Batch:
    """Same-shape matrix views, oriented tall, in float64, with the sums all metrics share.

    float64 throughout: exact copies of float32 weights, sums without
    cancellation, and the precision the Gram matrix needs.
    """

    def __init__(self, talls: list[Tensor]):
        self.matrices = _stack_float64(talls)  # (G, m, n), m >= n
        self.gram = self.matrices.mT @ self.matrices  # (G, n, n): W^T W
        self.totals = self.matrices.sum(dim=(-2, -1))  # (G,): sum of the entries
        # (G,): sum of the squared entries, the Gram matrix's trace
        self.squares = self.gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1)


def _tall(view: Tensor) -> Tensor:
    return view if view.shape[0] >= view.shape[1] else view.T


def _stack_float64(tensors: list[Tensor]) -> Tensor:
    """``torch.stack(tensors).double()`` in one copy instead of two."""
    stacked = torch.empty(
        (len(tensors), *tensors[0].shape), dtype=torch.float64, device=tensors[0].device
    )
    for slot, tensor in zip(stacked, tensors):
        slot.copy_(tensor)
    return stacked


SV_TOLERANCE = 1e-7
"""Bound on the relative error of ``mean_sv`` and ``var_sv`` from the Gram route (the
tests and the benchmark hold them to 1e-5 against a float64 SVD)."""


def _singular_values(batches: list[_Batch]) -> Tensor:
    """Singular values of every matrix, descending, NaN-padded: ``(V, k)``, batches' order.

    From the eigenvalues of the Gram matrices W^T W (n x n), about twice as fast
    as an SVD (measured in bench/metrics.py). Squaring the matrix costs precision
    only for the SMALL singular values: with rounding error d in the eigenvalues
    (d <= (m + n) eps ||W||_F^2 in float64), sigma_i = sqrt(lambda_i) is off by at
    most min(sqrt(d), d / sigma_i), while the largest, the spectral norm, keeps
    relative error d / (2 sigma_1^2) <= (m + n) n eps / 2 (under 1e-7 for any
    m + n, n below ~10^4). Where that bound could move ``mean_sv`` or ``var_sv`` by
    more than SV_TOLERANCE relative (an ill-conditioned matrix, or one whose
    singular values are all nearly equal), that matrix falls back to a float64 SVD.
    """
    rows = sum(len(b.matrices) for b in batches)
    widest = max(b.gram.shape[-1] for b in batches)
    # A small (V, k) table: its bookkeeping is cheaper in numpy than in torch.
    eigenvalues = np.full((rows, widest), np.nan)
    sizes = np.empty(rows)
    start = 0
    for batch in batches:
        count, m, n = batch.matrices.shape
        ascending = torch.linalg.eigvalsh(batch.gram).cpu().numpy()
        eigenvalues[start : start + count, :n] = ascending[:, ::-1]
        sizes[start : start + count] = m + n
        start += count
    singular = np.sqrt(np.maximum(eigenvalues, 0.0))  # NaN padding stays NaN
    doubtful = _gram_route_doubtful(eigenvalues, singular, sizes)
    start = 0
    for batch in batches:
        count, _, n = batch.matrices.shape
        redo = np.flatnonzero(doubtful[start : start + count])
        if redo.size:
            singular[start + redo, :n] = torch.linalg.svdvals(batch.matrices[redo]).cpu().numpy()
        start += count
    return torch.from_numpy(singular).to(batches[0].gram.device)


def _gram_route_doubtful(
    eigenvalues: np.ndarray, singular: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """Which matrices' singular values from the Gram route may miss SV_TOLERANCE.

    ``eigenvalues`` (V, k) of the Gram matrices, descending, NaN-padded, and
    ``singular`` their clamped square roots; ``sizes`` (V,) is m + n of each
    matrix. The bound d on each eigenvalue's error is explained in
    ``_singular_values``.
    """
    counts = np.count_nonzero(~np.isnan(eigenvalues), axis=-1)
    rounding = sizes[:, None] * np.finfo(np.float64).eps * np.nansum(eigenvalues, -1)[:, None]
    # bound on mean_sv's error: the mean of min(sqrt(d), d / sigma_i) (0/0 for an
    # all-zero matrix: no error)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.nansum(rounding / np.maximum(singular, np.sqrt(rounding)), -1) / counts
    mean_sv = np.nansum(singular, -1) / counts
    var_sv = np.nansum((singular - mean_sv[:, None]) ** 2, -1) / counts
    largest = singular[:, 0]
    return (error > SV_TOLERANCE * mean_sv) | (2 * largest * error > SV_TOLERANCE * var_sv)


# ------------------------------------------------ modular-arithmetic metrics


def grad_sym(model: nn.Module, p: int, n_samples: int = 100, seed: int = 0) -> float:
    """Mean cosine similarity of d(correct logit)/d(embedding of a) and .../d(embedding of b).

    Over ``n_samples`` pairs (a, b) drawn with ``seed``; the correct output is
    c = (a + b) mod p. The model must provide ``embed_tokens(tokens)`` and
    ``forward_embedded(x)`` (see ``trainer.tasks.modular``). Needs gradients, so
    it does not run under ``no_grad``; parameter gradients are left untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    a = torch.randint(0, p, (n_samples,), generator=generator).to(device)
    b = torch.randint(0, p, (n_samples,), generator=generator).to(device)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (N, 3): a, b, '='
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        embedded = model.embed_tokens(tokens).detach().requires_grad_(True)  # (N, 3, d)
        logits = model.forward_embedded(embedded)  # (N, p)
        correct = logits.gather(1, ((a + b) % p).unsqueeze(1)).sum()
        # samples are independent, so the gradient of the sum holds each sample's own gradient
        (grad,) = torch.autograd.grad(correct, embedded)
    model.train(was_training)
    similarity = torch.nn.functional.cosine_similarity(grad[:, 0], grad[:, 1], dim=-1)
    return float(similarity.double().mean())


@torch.no_grad()
def dist_irr(model: nn.Module, p: int) -> float:
    """Distance irrelevance: how little the correct logit depends on a+b for fixed a-b.

    With L[a+b mod p][a-b mod p] the correct-answer logit of (a, b), the mean over
    columns of each column's std, divided by the std of all entries (ddof=0).
    """
    device = next(model.parameters()).device
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1).to(device), b.reshape(-1).to(device)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    was_training = model.training
    model.eval()
    logits = model(tokens).double()
    model.train(was_training)
    correct = logits.gather(1, ((a + b) % p).unsqueeze(1)).squeeze(1)
    table = torch.empty(p, p, dtype=torch.float64, device=device)
    table[(a + b) % p, (a - b) % p] = correct
    total = table.std(correction=0)
    if total == 0:
        return 0.0
    return float(table.std(dim=0, correction=0).mean() / total)
