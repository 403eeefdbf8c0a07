"""Benchmark: per-checkpoint cost of the weight metrics on the paper's modular-addition model.

Run with ``python bench/metrics.py`` (about a minute). It builds the paper
configuration's transformer (p=113, d_model 128, 4 heads, MLP 512), trains it a
few epochs, then times, in the same process and interleaved so machine load
hits both alike:

* **trainmap**: ``WeightMetrics.compute()`` -- per shape one batch of Gram
  matrices W^T W and their eigenvalues in float64 (an SVD only where that could
  miss 1e-7 relative); each parameter's sum and sum of squares once, merged into
  every group's mean and variance; one partition per median; all 84 columns
  (model level and per hook point);
* **reference procedure**: what visualizing-training (Hu et al.'s public code,
  ``visualizing_training/train.py`` and ``metrics.py``) does per checkpoint,
  in torch on the CPU in the weights' float32, for the same matrices: the
  forward hook copies each hook module's parameters (``clone().detach().cpu()
  .numpy()``) on every forward pass of a checkpoint epoch, keeping the first
  copy: twice here, the training step's and the evaluation's (the paper config
  is full batch, and the reference evaluates right after the step); then per
  matrix ``get_matrix_metrics``: isnan/isinf/isneginf checks, ``vector_norm``
  ord 1 and 2, ``trace``, ``matrix_norm(ord=2)`` (one decomposition) and
  ``torch.svd(compute_uv=False)`` (a second one), singular values below 1e-5
  zeroed, mean and Bessel variance, each read with ``.item()``
  and the singular values with ``.tolist()``; and ``get_distribution_stats``
  (mean, var, median) over the concatenated weights and the biases. The
  reference computes those distribution stats for the whole model only; to give
  the same columns it runs them per hook point too (row "same columns"), and
  the row "model-level stats only" is the reference's own, smaller, workload.

Values: trainmap's columns against a float64 numpy SVD of the same weights
(must agree to 1e-5 relative), and against the reference procedure on the
columns where the two define the same thing. The reference's variances use
Bessel's correction (undone here, k/(k-1) is exact) and its median is the lower
middle value (METHOD.md: the mean of the two), so medians are compared to
numpy only.

Then the critical path: the metric time as a fraction of one training epoch of
the paper config (full-batch AdamW on 30% of 113^2 pairs; target <= 2%).
Everything runs on one torch thread, as each training worker does. Minimum and
median over interleaved calls are both printed: on a shared machine they differ.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings

import numpy as np
import torch

from trainmap.trainer.columns import WEIGHT_COLUMNS
from trainmap.trainer.metrics import WeightMetrics, dist_irr, grad_sym
from trainmap.trainer.tasks import get_task
from trainmap.trainer.train import make_optimizer

# ---------------------------------------------- the reference's procedure


def reference_matrix_metrics(X):
    """visualizing_training.metrics.get_matrix_metrics, as published."""
    if torch.isnan(X).any():
        return
    if torch.isinf(X).any():
        return
    if torch.isneginf(X).any():
        return
    l1 = torch.linalg.vector_norm(X, ord=1).item()
    l2 = torch.linalg.vector_norm(X, ord=2).item()
    trace = torch.trace(X).item()
    spectral = torch.linalg.matrix_norm(X, ord=2).item()
    singular_vals = torch.svd(X, compute_uv=False).S
    singular_vals[singular_vals < 1e-5] = 0.0
    mean = torch.mean(singular_vals).item()
    var = torch.var(singular_vals).item()
    return {
        "l1": l1,
        "l2": l2,
        "trace": trace,
        "spectral": spectral,
        "code_sparsity": l1 / l2 if l2 > 0 else 0.0,
        "computational_sparsity": trace / spectral if spectral > 0 else 0.0,
        "mean_singular_value": mean,
        "var_singular_value": var,
        "singular_values": singular_vals.tolist(),
    }


def reference_distribution_stats(X):
    """visualizing_training.metrics.get_distribution_stats, as published."""
    mean = torch.mean(X).item()
    var = torch.var(X).item()
    median = torch.median(X).item()
    return {"mean": mean, "var": var, "median": median}


def reference_checkpoint(model, hook_points, per_hook_stats=True, heads=None):
    """One checkpoint the reference's way: the hook's copies, then the metrics from the first.

    ``heads`` maps a parameter name to a head count: that matrix is split by rows
    and each head measured apart (``get_matrix_metrics(k[i]) for i in
    range(nheads)``, as the reference does for W_K, W_Q and W_V). Returns (per
    hook point: list of get_matrix_metrics dicts, stats per group), the group ""
    being the whole model.
    """
    heads = heads or {}
    modules = dict(model.named_modules())
    # Trainer._cache_weights_biases runs in the hook on every forward pass of a
    # checkpoint epoch (the training step's, then _evaluate's) and copies first,
    # then drops the copy if the step is already cached.
    copies = [
        {
            hook: {n: p.clone().detach().cpu().numpy() for n, p in modules[hook].named_parameters()}
            for hook in hook_points
        }
        for _forward in ("training step", "evaluation")
    ]
    cache = copies[0]
    per_matrix, weights, biases = {}, {}, {}
    for hook, params in cache.items():  # Trainer.compute_metrics, the non-transformer branch
        per_matrix[hook], weights[hook], biases[hook] = [], [], []
        for name, array in params.items():
            tensor = torch.from_numpy(array)
            if name.endswith("bias"):
                biases[hook].append(tensor.view(-1))
            else:
                n_heads = heads.get(f"{hook}.{name}", 0)
                if n_heads:
                    split = tensor.view(n_heads, -1, tensor.shape[-1])  # the reference's layout
                    per_matrix[hook] += [reference_matrix_metrics(split[i]) for i in range(n_heads)]
                else:
                    per_matrix[hook].append(reference_matrix_metrics(tensor))
                weights[hook].append(tensor.view(-1))
    groups = {"": hook_points, **({h: [h] for h in hook_points} if per_hook_stats else {})}
    stats = {}
    for group, hooks in groups.items():
        all_w = [w for h in hooks for w in weights[h]]
        all_b = [b for h in hooks for b in biases[h]]
        stats[group] = (
            reference_distribution_stats(torch.cat(all_w)) if all_w else {},
            reference_distribution_stats(torch.cat(all_b)) if all_b else {},
        )
    return per_matrix, stats


def reference_columns(model, hook_points, heads=None) -> dict[str, float]:
    """The reference's numbers as trainmap columns, its Bessel correction undone."""
    per_matrix, stats = reference_checkpoint(model, hook_points, heads=heads)
    names = {"mean_singular_value": "mean_sv", "var_singular_value": "var_sv"}
    out = {}
    for group, hooks in {"": hook_points, **{h: [h] for h in hook_points}}.items():
        prefix = f"{group}/" if group else ""
        dicts = [d for h in hooks for d in per_matrix[h]]
        for key in ("l1", "l2", "code_sparsity", "trace", "spectral", "computational_sparsity"):
            out[prefix + key] = float(np.mean([d[key] for d in dicts]))
        k = [len(d["singular_values"]) for d in dicts]
        out[prefix + "mean_sv"] = float(np.mean([d["mean_singular_value"] for d in dicts]))
        out[prefix + names["var_singular_value"]] = float(
            np.mean([d["var_singular_value"] * (n - 1) / n for d, n in zip(dicts, k)])
        )
        for suffix, (group_stats, count) in zip("wb", _with_counts(model, hooks, stats[group])):
            for name in ("mean", "var", "median"):
                value = group_stats.get(name, math.nan)
                if name == "var" and count:
                    value *= (count - 1) / count
                out[f"{prefix}{name}_{suffix}"] = value
    return out


def _with_counts(model, hooks, group_stats):
    modules = dict(model.named_modules())
    params = [(n, p) for h in hooks for n, p in modules[h].named_parameters()]
    n_w = sum(p.numel() for n, p in params if not n.endswith("bias"))
    n_b = sum(p.numel() for n, p in params if n.endswith("bias"))
    return [(group_stats[0], n_w), (group_stats[1], n_b)]


# -------------------------------------------------- float64 ground truth


def float64_columns(model, hook_points, heads=None) -> dict[str, float]:
    """The 14 columns per group from a float64 numpy SVD of every matrix (the truth)."""
    modules = dict(model.named_modules())
    heads = {id(p): heads[n] for n, p in model.named_parameters() if n in (heads or {})}
    out = {}
    for group, hooks in {"": hook_points, **{h: [h] for h in hook_points}}.items():
        prefix = f"{group}/" if group else ""
        seen = {}
        for h in hooks:
            for n, p in modules[h].named_parameters():
                seen[id(p)] = (n, p.detach().double().numpy(), heads.get(id(p), 1))
        matrices = [
            head
            for n, a, n_heads in seen.values()
            if not n.endswith("bias")
            for head in np.split(a.reshape(a.shape[0], -1), n_heads)
        ]
        sv = [np.linalg.svd(w, compute_uv=False) for w in matrices]
        l1 = [np.abs(w).sum() for w in matrices]
        l2 = [np.sqrt((w**2).sum()) for w in matrices]
        trace = [np.trace(w) for w in matrices]
        columns = {
            "l1": l1,
            "l2": l2,
            "code_sparsity": [a / b if b else 0.0 for a, b in zip(l1, l2)],
            "trace": trace,
            "spectral": [s[0] for s in sv],
            "computational_sparsity": [t / s[0] if s[0] else 0.0 for t, s in zip(trace, sv)],
            "mean_sv": [s.mean() for s in sv],
            "var_sv": [s.var() for s in sv],
        }
        out.update({prefix + k: float(np.mean(v)) for k, v in columns.items()})
        for suffix, arrays in (
            ("w", [a for n, a, _ in seen.values() if not n.endswith("bias")]),
            ("b", [a for n, a, _ in seen.values() if n.endswith("bias")]),
        ):
            flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)
            for name, fn in (("mean", np.mean), ("median", np.median), ("var", np.var)):
                out[f"{prefix}{name}_{suffix}"] = float(fn(flat)) if flat.size else math.nan
    return out


def worst_difference(ours, theirs, columns):
    """(max relative difference, its column) over columns present in both."""
    worst = (0.0, "")
    for key in columns:
        a, b = ours[key], theirs[key]
        if math.isnan(a) and math.isnan(b):
            continue
        worst = max(worst, (abs(a - b) / max(abs(b), 1e-12), key))
    return worst


# ------------------------------------------------------------------ timing


def timings(fn, repeats, clock=time.perf_counter):
    """Times of ``repeats`` calls, in seconds, on ``clock`` (wall by default)."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def both_clocks(fn, repeats):
    """(wall times, CPU times of this thread): under load the CPU time is the steadier."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return wall, cpu


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    warnings.filterwarnings("ignore", message=".*torch.svd.*")  # the reference's deprecated call
    torch.set_num_threads(1)
    task = get_task("modadd")
    config = task.config("paper", seed=0)
    torch.manual_seed(0)
    model = task.make_model(config)
    data = task.make_data(config)
    optimizer = make_optimizer(model, config)
    hooks = task.hook_points

    def epoch():  # the paper config trains full batch: one epoch is one AdamW step
        loss = task.loss(model(data.train_x), data.train_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm up, and move the weights off their initialisation
        epoch()
    print(f"start: {load()}")
    epoch_clocks = both_clocks(epoch, 20)
    split = {f"blocks.0.attn.{name}.weight": config.n_heads for name in "qkv"}
    failed = False
    for label, heads in (("whole matrices (the paper preset)", None),
                         ("q, k, v split per head, as the reference does", split)):  # fmt: skip
        failed |= compare(label, model, hooks, heads, epoch_clocks, config)
    task_t = timings(lambda: (grad_sym(model, config.p, 100), dist_irr(model, config.p)), 5)
    print(f"grad_sym + dist_irr per checkpoint (not weight metrics): {min(task_t) * 1e3:.1f} ms")
    if failed:
        raise SystemExit("trainmap's values disagree with a float64 SVD beyond 1e-5 relative")
    end_to_end()
    print(f"end: {load()}")


def compare(label, model, hooks, heads, epoch_clocks, config) -> bool:
    """Time trainmap against the reference procedure on one set of matrices; True if wrong."""
    metrics = WeightMetrics(model, hooks, split_heads=heads)
    ours, _ = metrics.compute()
    truth = float64_columns(model, hooks, heads)
    reference = reference_columns(model, hooks, heads)
    assert set(ours) == set(truth) == set(reference), set(ours) ^ set(reference)
    vs_truth = worst_difference(ours, truth, ours)
    comparable = [k for k in ours if "median" not in k]
    vs_reference = worst_difference(ours, reference, comparable)
    medians = worst_difference(reference, truth, [k for k in ours if "median" in k])
    fallbacks = count_fallbacks(metrics)

    clocks = {"ours": ([], []), "same": ([], []), "published": ([], []), "epoch": epoch_clocks}
    jobs = {
        "ours": metrics.compute,
        "same": lambda: reference_checkpoint(model, hooks, heads=heads),
        "published": lambda: reference_checkpoint(model, hooks, False, heads=heads),
    }
    for _ in range(10):  # interleaved rounds, so load changes hit all alike
        for name, job in jobs.items():
            wall, cpu = both_clocks(job, 5)
            clocks[name][0].extend(wall)
            clocks[name][1].extend(cpu)
    snapshot_t = timings(metrics.snapshot, 20)

    def row(label, name):
        wall, cpu = clocks[name]
        print(f"  {label:<50}{min(cpu) * 1e3:8.2f} {statistics.median(cpu) * 1e3:8.2f}"
              f"{min(wall) * 1e3:10.2f} {statistics.median(wall) * 1e3:8.2f}")  # fmt: skip

    def ratio(slow, fast):
        (ws, cs), (wf, cf) = clocks[slow], clocks[fast]
        return (f"{min(cs) / min(cf):.1f}x CPU min, {statistics.median(cs) / statistics.median(cf):.1f}x "
                f"CPU median, {min(ws) / min(wf):.1f}x wall min, "
                f"{statistics.median(ws) / statistics.median(wf):.1f}x wall median")  # fmt: skip

    shapes = sorted({tuple(p.shape) for n, p in model.named_parameters() if p.dim() >= 2})
    print(f"weight metrics per checkpoint, paper modular-addition transformer, {label} "
          "(1 torch thread)")  # fmt: skip
    print(f"  matrices: {metrics.n_matrices}, parameter shapes {shapes}; "
          f"float64 SVD fallbacks: {fallbacks}")  # fmt: skip
    print(f"  hook points: {', '.join(hooks)}; columns: {len(ours)} ({len(WEIGHT_COLUMNS)} x "
          f"{1 + len(hooks)} groups)")  # fmt: skip
    print(f"  {'ms':<50}{'CPU min':>8} {'median':>8}{'wall min':>10} {'median':>8}")
    row("trainmap (Gram eigvalsh, float64, per shape)", "ours")
    row("reference procedure, same columns", "same")
    row("reference procedure, model-level stats only", "published")
    row("one training epoch, paper config (one AdamW step)", "epoch")
    print(
        f"  trainmap snapshot() (the copy a background job needs): {min(snapshot_t) * 1e3:.2f} ms"
    )
    print(f"  speed-up vs reference, same columns: {ratio('same', 'ours')} (target >= 4x)")
    print(f"  speed-up vs reference, its own smaller workload: {ratio('published', 'ours')}")
    print(f"  max relative difference vs float64 numpy SVD: {vs_truth[0]:.1e} ({vs_truth[1]}; "
          "must be <= 1e-5)")  # fmt: skip
    print(f"  max relative difference vs reference (medians excluded, Bessel undone): "
          f"{vs_reference[0]:.1e} ({vs_reference[1]})")  # fmt: skip
    print(f"  reference's lower-middle median vs the mean of the middle two: {medians[0]:.1e} "
          f"relative ({medians[1]})")  # fmt: skip
    (ours_wall, ours_cpu), (epoch_wall, epoch_cpu) = clocks["ours"], clocks["epoch"]
    print(f"  weight metrics / epoch: {min(ours_cpu) / min(epoch_cpu):.1%} CPU min, "
          f"{statistics.median(ours_wall) / statistics.median(epoch_wall):.1%} wall median "
          "(target <= 2%, else off the critical path: below)")  # fmt: skip
    print(f"  amortised over the paper preset's checkpoint interval ({config.eval_every} epochs): "
          f"{min(ours_cpu) / (min(epoch_cpu) * config.eval_every):.3%}")  # fmt: skip
    print(f"  ({load()})")
    return vs_truth[0] > 1e-5


def count_fallbacks(metrics) -> int:
    """How many matrices of the model took the float64-SVD fallback (0 is the fast path)."""
    calls = []
    svdvals = torch.linalg.svdvals
    torch.linalg.svdvals = lambda a, *args, **kw: (
        calls.append(a.shape[0]) or svdvals(a, *args, **kw)
    )
    try:
        metrics.compute()
    finally:
        torch.linalg.svdvals = svdvals
    return sum(calls)


# ------------------------------------------------------------ end to end

E2E_EPOCHS = 100


def end_to_end() -> None:
    """Training wall time of the paper preset, metrics synchronous vs background vs none.

    ``none`` skips only the weight metrics (evaluation, grad_sym, dist_irr and the
    resume state are as usual). Two checkpoint intervals: the paper's (every 100
    epochs) and every 5 epochs, where the metrics' share would show; the latter
    twice, in opposite orders, keeping each mode's faster run (load drifts).
    Process CPU time (both threads) is printed beside the wall time.
    """
    import resource
    import tempfile

    from trainmap.trainer.train import train_run

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    task = get_task("modadd")
    modes = ("none", "sync", "background")
    print(f"end to end: paper preset, {E2E_EPOCHS} epochs, one training process ({load()})")
    with tempfile.TemporaryDirectory(prefix="trainmap-bench-") as root:
        for eval_every, orders in ((100, [modes]), (5, [modes, modes[::-1]])):
            config = task.config("paper", seed=0, epochs=E2E_EPOCHS, eval_every=eval_every)
            wall, cpu = {m: math.inf for m in modes}, {m: math.inf for m in modes}
            for round_, order in enumerate(orders):
                for mode in order:
                    saved = (WeightMetrics.compute, WeightMetrics.snapshot)
                    if mode == "none":
                        WeightMetrics.compute = lambda self, snapshot=None: ({}, True)
                        WeightMetrics.snapshot = lambda self: []
                    start, start_cpu = time.perf_counter(), cpu_seconds()
                    try:
                        train_run(config, root, f"e2e-{eval_every}-{mode}-{round_}",
                                  progress=False, background_metrics=mode == "background")  # fmt: skip
                    finally:
                        WeightMetrics.compute, WeightMetrics.snapshot = saved
                    wall[mode] = min(wall[mode], time.perf_counter() - start)
                    cpu[mode] = min(cpu[mode], cpu_seconds() - start_cpu)
            print(f"  checkpoint every {eval_every:>3} epochs ({E2E_EPOCHS // eval_every:>2} "
                  f"checkpoints, best of {len(orders)}): wall none {wall['none']:.1f} s, "
                  f"sync {wall['sync']:.1f} s ({wall['sync'] / wall['none']:.3f}x), "
                  f"background {wall['background']:.1f} s "
                  f"({wall['background'] / wall['none']:.3f}x); process CPU none "
                  f"{cpu['none']:.1f} s, sync {cpu['sync']:.1f} s, background "
                  f"{cpu['background']:.1f} s ({load()})")  # fmt: skip


if __name__ == "__main__":
    main()
