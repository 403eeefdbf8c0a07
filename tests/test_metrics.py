"""Every registered metric against an independent numpy computation (docs/method.md §1).

Parametrized over the registry, Cockpit-style: a metric added to
``trainer.metrics`` without a numpy reference here makes
``test_every_registered_metric_has_a_reference`` fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainmap.trainer.columns import MATRIX_STATISTICS, VALUE_STATISTICS, WEIGHT_COLUMNS
from trainmap.trainer.metrics import (
    MATRIX_METRICS,
    VALUE_METRICS,
    HookPointError,
    WeightMetrics,
    dist_irr,
    grad_sym,
    resolve_hook_points,
)

# ------------------------------------------------------- numpy references


def ratio(a, b):
    return 0.0 if b == 0 else a / b


NUMPY_MATRIX = {
    "l1": lambda w, sv: np.abs(w).sum(),
    "l2": lambda w, sv: np.sqrt((w**2).sum()),
    "code_sparsity": lambda w, sv: ratio(np.abs(w).sum(), np.sqrt((w**2).sum())),
    "trace": lambda w, sv: np.trace(w),  # numpy sums the main diagonal of non-square too
    "spectral": lambda w, sv: sv.max(),
    "computational_sparsity": lambda w, sv: ratio(np.trace(w), sv.max()),
    "mean_sv": lambda w, sv: sv.mean(),
    "var_sv": lambda w, sv: sv.var(),  # ddof=0
}
NUMPY_VALUE = {"mean": np.mean, "median": np.median, "var": np.var}


def numpy_columns(matrices, weights, biases) -> dict[str, float]:
    """The 14 columns from float64 numpy arrays: matrices 2-D, weights/biases lists of arrays."""
    out = {}
    singular = [np.linalg.svd(w, compute_uv=False) for w in matrices]
    for name, fn in NUMPY_MATRIX.items():
        out[name] = float(np.mean([fn(w, sv) for w, sv in zip(matrices, singular)]))
    for suffix, arrays in (("w", weights), ("b", biases)):
        flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)
        for name, fn in NUMPY_VALUE.items():
            out[f"{name}_{suffix}"] = float(fn(flat)) if flat.size else math.nan
    return out


def as_numpy(param):
    return param.detach().double().numpy()


# ------------------------------------------------------------ weight cases


def random_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))


def nonsquare_model():
    torch.manual_seed(1)
    # (7, 5), (3, 7) and (5, 7): tall and wide matrices, two of them transposes in shape
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Linear(3, 7, bias=False))


def conv_model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, (2, 5)), nn.Flatten())


def zero_model():
    model = nonsquare_model()
    with torch.no_grad():
        model[0].weight.zero_()  # one all-zero matrix among nonzero ones
        model[0].bias.zero_()
    return model


def all_zero_model():
    model = nonsquare_model()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model


CASES = {
    "random": random_model,
    "nonsquare": nonsquare_model,
    "conv": conv_model,
    "zero": zero_model,
    "all_zero": all_zero_model,
}


def reference_for(model, hooks):
    modules = dict(model.named_modules())
    matrices, weights, biases = [], [], []
    for hook in hooks:
        for name, param in modules[hook].named_parameters():
            if name.endswith("bias"):
                biases.append(as_numpy(param))
            else:
                weights.append(as_numpy(param))
                matrices.append(as_numpy(param).reshape(param.shape[0], -1))
    return numpy_columns(matrices, weights, biases)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model = CASES[request.param]()
    hooks = [name for name, m in model.named_modules() if name and list(m.parameters())]
    columns, finite = WeightMetrics(model, hooks).compute()
    assert finite
    return request.param, model, hooks, columns


def test_every_registered_metric_has_a_reference():
    assert set(MATRIX_METRICS) == set(NUMPY_MATRIX)
    assert set(VALUE_METRICS) == set(NUMPY_VALUE)
    # the torch-free names analysis and app read are the registry's, in its order
    assert tuple(MATRIX_METRICS) == MATRIX_STATISTICS
    assert tuple(VALUE_METRICS) == VALUE_STATISTICS
    assert len(WEIGHT_COLUMNS) == 14


@pytest.mark.parametrize("column", WEIGHT_COLUMNS)
def test_model_level_column_matches_numpy(case, column):
    name, model, hooks, columns = case
    expected = reference_for(model, hooks)[column]
    if math.isnan(expected):
        assert math.isnan(columns[column])
    else:
        assert columns[column] == pytest.approx(expected, rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("column", WEIGHT_COLUMNS)
def test_per_hook_point_column_matches_numpy(case, column):
    _, model, hooks, columns = case
    for hook in hooks:
        expected = reference_for(model, [hook])[column]
        got = columns[f"{hook}/{column}"]
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), hook


def test_zero_matrix_sparsities_are_zero_not_nan():
    columns, _ = WeightMetrics(all_zero_model(), ["0"]).compute()
    assert columns["code_sparsity"] == 0.0 and columns["computational_sparsity"] == 0.0
    assert columns["spectral"] == 0.0 and columns["var_w"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_makes_every_column_nan(bad):
    model = nonsquare_model()
    with torch.no_grad():
        model[2].weight[1, 1] = bad
    metrics = WeightMetrics(model, ["0", "2"])
    columns, finite = metrics.compute()
    assert not finite
    assert set(columns) == set(WEIGHT_COLUMNS) | {
        f"{h}/{c}" for h in ("0", "2") for c in WEIGHT_COLUMNS
    }
    assert all(math.isnan(value) for value in columns.values())


def test_median_of_even_count_averages_the_middle_values():
    model = nn.Sequential(nn.Linear(2, 1, bias=False))  # 2 weights
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 4.0]]))
    columns, _ = WeightMetrics(model, None).compute()
    assert columns["median_w"] == 2.5


def test_per_head_split_treats_each_head_as_a_matrix():
    torch.manual_seed(3)
    model = nn.ModuleDict({"q": nn.Linear(8, 8, bias=False), "o": nn.Linear(8, 8, bias=False)})
    split = {"q.weight": 4, "o.weight": (4, 1)}  # q by rows (output), o by columns (input)
    columns, _ = WeightMetrics(model, ["q", "o"], split_heads=split).compute()
    q, o = as_numpy(model["q"].weight), as_numpy(model["o"].weight)
    heads = [q[2 * i : 2 * i + 2] for i in range(4)] + [o[:, 2 * i : 2 * i + 2] for i in range(4)]
    expected = numpy_columns(heads, [q, o], [])
    for column in MATRIX_METRICS:
        assert columns[column] == pytest.approx(expected[column], rel=1e-5, abs=1e-7)
    with pytest.raises(HookPointError, match="cannot split"):
        WeightMetrics(model, ["q"], split_heads={"q.weight": 3})


def test_shared_parameter_counts_once_at_model_level():
    model = nonsquare_model()
    both = WeightMetrics(model, ["0", "2"]).compute()[0]
    nested = nn.Sequential(model)  # hook points "0" and "0.0" share model[0]'s weights
    overlapping = WeightMetrics(nested, ["0.0", "0"]).compute()[0]
    alone = WeightMetrics(nested, ["0"]).compute()[0]
    assert overlapping["l1"] == pytest.approx(alone["l1"])
    assert both["0/l1"] == pytest.approx(overlapping["0.0/l1"])


def test_gains_only_when_asked():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3, bias=False))
    assert "1" not in resolve_hook_points(model, None)  # a norm's gain is neither weight nor bias
    with torch.no_grad():
        model[1].weight.fill_(5.0)
    without = WeightMetrics(model, ["0"]).compute()[0]
    with_gains = WeightMetrics(model, ["0", "1"], include_gains=True).compute()[0]
    flat = np.concatenate([as_numpy(model[0].weight).ravel(), np.full(3, 5.0)])
    assert with_gains["mean_w"] == pytest.approx(flat.mean())
    assert with_gains["l1"] == pytest.approx(without["l1"])  # gains are never matrices


def test_metrics_leave_gradients_alone_and_need_none():
    model = nonsquare_model()
    loss = model(torch.ones(2, 5)).sum()
    loss.backward()
    before = [p.grad.clone() for p in model.parameters()]
    WeightMetrics(model, ["0"]).compute()
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


# ------------------------------------------------ modular-arithmetic metrics


class TinyModular(nn.Module):
    """Embeds (a, b, '=') and reads out a nonlinear function of them: enough for both metrics."""

    def __init__(self, p, d=6):
        super().__init__()
        torch.manual_seed(4)
        self.embed = nn.Embedding(p + 1, d)
        self.mix = nn.Linear(3 * d, 16)
        self.out = nn.Linear(16, p)

    def embed_tokens(self, tokens):
        return self.embed(tokens)

    def forward_embedded(self, x):
        return self.out(torch.tanh(self.mix(x.flatten(1))))

    def forward(self, tokens):
        return self.forward_embedded(self.embed_tokens(tokens))


def test_grad_sym_matches_per_sample_autograd():
    p, n = 7, 20
    model = TinyModular(p).double()
    got = grad_sym(model, p, n_samples=n, seed=5)
    assert all(p.grad is None for p in model.parameters())  # parameter grads untouched
    generator = torch.Generator().manual_seed(5)
    a = torch.randint(0, p, (n,), generator=generator)
    b = torch.randint(0, p, (n,), generator=generator)
    sims = []
    for ai, bi in zip(a.tolist(), b.tolist()):
        x = model.embed_tokens(torch.tensor([[ai, bi, p]])).detach().requires_grad_(True)
        model.forward_embedded(x)[0, (ai + bi) % p].backward()
        ga, gb = x.grad[0, 0].numpy(), x.grad[0, 1].numpy()
        sims.append(ga @ gb / (np.linalg.norm(ga) * np.linalg.norm(gb)))
    assert got == pytest.approx(float(np.mean(sims)), rel=1e-9)


def test_dist_irr_matches_numpy_table():
    p = 7
    model = TinyModular(p).double()
    with torch.no_grad():
        logits = np.array(
            [
                [model(torch.tensor([[a, b, p]]))[0, (a + b) % p].item() for b in range(p)]
                for a in range(p)
            ]
        )
    table = np.zeros((p, p))
    for a in range(p):
        for b in range(p):
            table[(a + b) % p, (a - b) % p] = logits[a, b]
    expected = table.std(axis=0).mean() / table.std()
    assert dist_irr(model, p) == pytest.approx(expected, rel=1e-9)


def test_dist_irr_is_zero_when_logits_depend_only_on_the_difference():
    p = 5

    class DifferenceOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.arange(p, dtype=torch.float64))

        def forward(self, tokens):
            difference = (tokens[:, 0] - tokens[:, 1]) % p
            return self.w[difference].unsqueeze(1).expand(-1, p) + 0.0

    assert dist_irr(DifferenceOnly(), p) == pytest.approx(0.0, abs=1e-12)


# ------------------------------- singular values through the Gram matrix


def with_singular_values(sv, rows, seed):
    """A float64 (rows, len(sv)) matrix with singular values ``sv`` and random bases."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(sv), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(sv), len(sv), generator=generator, dtype=torch.float64))
    return u @ torch.diag(torch.as_tensor(sv, dtype=torch.float64)) @ v.T


HARD_MATRICES = {
    # singular values over 12 decades: the small ones are lost in W^T W
    "ill_conditioned": lambda: with_singular_values(np.logspace(0, -12, 32), 48, 0),
    "rank_3": lambda: with_singular_values([5.0, 2.0, 1.0] + [0.0] * 29, 48, 1),
    "one_huge": lambda: with_singular_values([1e4] + [1e-3] * 31, 48, 2),
    # mean_sv small against sigma_1 and made of singular values the Gram matrix blurs
    "tiny_tail": lambda: with_singular_values([1.0] + [1e-9] * 31, 48, 6),
    # all singular values equal: var_sv is ~0 and every digit of it is rounding
    "orthogonal": lambda: with_singular_values([2.0] * 32, 48, 3),
    "realistic": lambda: torch.randn(48, 32, generator=torch.Generator().manual_seed(4)) / 7,
    "offset": lambda: 3.0 + 1e-3 * torch.randn(48, 32, generator=torch.Generator().manual_seed(5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(HARD_MATRICES))
def test_singular_value_metrics_match_a_float64_svd(name, dtype):
    """spectral, mean_sv and var_sv to 1e-5 relative against numpy's float64 SVD of the
    weights as stored, also where the Gram route alone would not be accurate enough."""
    model = nn.Sequential(nn.Linear(32, 48, bias=False)).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(HARD_MATRICES[name]())
    columns, _ = WeightMetrics(model, None).compute()
    sv = np.linalg.svd(as_numpy(model[0].weight), compute_uv=False)
    scale = sv.max() ** 2  # var_sv of equal singular values: compare to the squared scale
    assert columns["spectral"] == pytest.approx(sv.max(), rel=1e-5, abs=0)
    assert columns["mean_sv"] == pytest.approx(sv.mean(), rel=1e-5, abs=0)
    assert columns["var_sv"] == pytest.approx(sv.var(), rel=1e-5, abs=1e-12 * scale)


TALL_MATRICES = {  # the shapes of an MLP's matrices: Gram matrices of the narrow side
    "realistic": lambda: torch.randn(160, 64, generator=torch.Generator().manual_seed(7)) / 9,
    "ill_conditioned": lambda: with_singular_values(np.logspace(0, -12, 64), 160, 8),
    "rank_3": lambda: with_singular_values([5.0, 2.0, 1.0] + [0.0] * 61, 130, 9),
    "offset": lambda: (
        3.0 + 1e-3 * torch.randn(128, 64, generator=torch.Generator().manual_seed(10))
    ),
}


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("name", list(TALL_MATRICES))
def test_tall_and_wide_matrices_match_numpy(name, wide):
    tall = TALL_MATRICES[name]()
    weight = tall.T if wide else tall
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(weight)
    columns, _ = WeightMetrics(model, None).compute()
    expected = numpy_columns([as_numpy(model[0].weight)], [as_numpy(model[0].weight)], [])
    sv_scale = np.linalg.svd(as_numpy(model[0].weight), compute_uv=False).max() ** 2
    for column in MATRIX_METRICS:
        absolute = 1e-12 * sv_scale if column == "var_sv" else 0
        assert columns[column] == pytest.approx(expected[column], rel=1e-5, abs=absolute), column


def test_gram_route_falls_back_per_matrix_only_where_needed(monkeypatch):
    """Same-shape matrices share a batch; only the ill-conditioned one gets an SVD."""
    calls = []
    svdvals = torch.linalg.svdvals

    def counting(a, *args, **kwargs):
        calls.append(a.shape[0])
        return svdvals(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svdvals", counting)
    model = nn.ModuleDict(
        {name: nn.Linear(32, 48, bias=False) for name in ("realistic", "ill_conditioned", "offset")}
    )
    with torch.no_grad():
        for name, layer in model.items():
            layer.weight.copy_(HARD_MATRICES[name]())
    columns, _ = WeightMetrics(model, None).compute()
    assert calls == [1]  # one batch of three matrices, one of them recomputed by SVD
    for name, layer in model.items():
        sv = np.linalg.svd(as_numpy(layer.weight), compute_uv=False)
        assert columns[f"{name}/mean_sv"] == pytest.approx(sv.mean(), rel=1e-5, abs=0)


# ------------------------------------- group moments: one pass per parameter


def test_moments_merge_to_the_moments_of_the_union():
    """Chan's pairwise update: merged moments equal those of the concatenated values."""
    from trainmap.trainer.metrics import Moments, _moments

    generator = torch.Generator().manual_seed(7)
    parts = [
        torch.randn(n, generator=generator) * s + c
        for n, s, c in ((5, 1.0, 3.0), (1, 0.0, -2.0), (40, 1e-3, 0.5))
    ]
    merged = sum((_moments(p) for p in parts), Moments())
    union = torch.cat(parts).double().numpy()
    assert merged.count == union.size
    assert merged.total == pytest.approx(union.sum(), rel=1e-12)
    assert merged.centred_squares / merged.count == pytest.approx(union.var(), rel=1e-12)
    assert Moments() + _moments(parts[0]) == _moments(parts[0])  # the empty set merges to the other


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e3])
def test_variance_of_nearly_constant_weights_keeps_its_digits(offset):
    """A matrix whose entries are all close to one value: sum of squares minus total^2/n
    would cancel, so the deviations are summed directly (CANCELLATION_RATIO)."""
    generator = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Linear(32, 48, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(offset + 1e-3 * torch.randn(48, 32, generator=generator))
    columns, _ = WeightMetrics(model, None).compute()
    weights = as_numpy(model[0].weight)
    assert columns["var_w"] == pytest.approx(weights.var(), rel=1e-9)
    assert columns["mean_w"] == pytest.approx(weights.mean(), rel=1e-12)


def test_median_on_a_device_path_equals_the_numpy_path():
    """The order statistics taken where the weights are (a GPU) give numpy's median;
    checked here with CPU tensors, which take the same code."""
    from trainmap.trainer.metrics import Moments, Values, median

    generator = torch.Generator().manual_seed(9)
    for sizes in ((7,), (6,), (3, 4), (1, 1)):
        parts = [torch.randn(n, generator=generator) for n in sizes]
        expected = float(
            np.median(torch.cat(parts).double().numpy())
        )  # mean of the middle two, exactly
        count = sum(sizes)
        as_tensors = median(Values(parts, Moments(count)))
        as_arrays = median(Values([p.numpy() for p in parts], Moments(count)))
        assert as_tensors == expected and as_arrays == expected


def test_bfloat16_weights_are_measured():
    model = nonsquare_model().to(torch.bfloat16)
    columns, finite = WeightMetrics(model, ["0", "2"]).compute()
    expected = reference_for(model, ["0", "2"])
    assert finite
    for column in WEIGHT_COLUMNS:
        assert columns[column] == pytest.approx(expected[column], rel=1e-5, abs=1e-7), column


def test_computing_leaves_the_weights_unchanged():
    """The medians partition copies, never the weights themselves."""
    model = nonsquare_model()
    before = [p.detach().clone() for p in model.parameters()]
    WeightMetrics(model, ["0", "2", "3"]).compute()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_hook_points_without_matrices_give_nan_matrix_columns():
    """A norm layer's gain and bias only: the matrix columns are NaN, the value columns numbers."""
    model = nn.Sequential(nn.LayerNorm(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model[0].bias.copy_(torch.tensor([0.5, -0.5, 1.5, 0.0]))
    columns, finite = WeightMetrics(model, ["0"], include_gains=True).compute()
    assert finite
    assert all(math.isnan(columns[c]) for c in MATRIX_METRICS)
    assert columns["mean_w"] == 2.5 and columns["median_w"] == 2.5
    assert columns["var_w"] == pytest.approx(1.25) and columns["var_b"] == pytest.approx(0.546875)
