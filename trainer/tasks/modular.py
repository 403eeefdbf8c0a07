"""Modular addition (grokking): predict (a + b) mod p from the tokens ``a b =``.

The paper's setup (Hu et al. 2023, after Nanda et al. 2023): p = 113, 30% of
all p*p pairs for training, a one-layer transformer with d_model 128, 4 heads
of 32, MLP 512 with ReLU, no LayerNorm, full-batch AdamW lr 1e-3, weight decay
1.0, betas (0.9, 0.98). The LayerNorm variant adds pre-norms and a final norm
and trains with batch 256 (docs/method.md §5).

Presets
-------
``paper``  the configuration above, 20000 epochs, a checkpoint every 100.
``quick``  grokking with a fast and a slow branch, sized for a CPU: p = 47,
           60% of the pairs for training, d_model 48 (4 heads of 12), MLP 192,
           full-batch AdamW lr 1e-2, weight decay 1.0, 500 epochs, a
           checkpoint every 5 (100 rows per run). Smaller p and width make a
           step cheap; lr 1e-2 makes every seed memorise within 100 epochs;
           with 60% train it then generalises at a seed-dependent time (with
           30-40% train at most 3 of 8 seeds generalised by epoch 800-1200).
``tiny``   a second or two per seed, for tests; it does not have to generalise.

The LayerNorm variant (``modadd_ln``) has the paper preset with LayerNorm and
batch 256. Its ``quick`` is ``modadd`` quick with LayerNorm, minibatches of 128,
d_model 64 / MLP 256, AdamW lr 2e-3, weight decay 2.0, 60 epochs, a checkpoint
every epoch. Full batch, it too memorised first and had not generalised by
epoch 100 (8 of 8 seeds). At d_model 48 (lr 2e-3 to 5e-3, weight decay 0.5 to
3, batch 64 to 256) 1 to 8 of 8 seeds ended below 0.96 eval accuracy after
60-80 epochs, some stalled at a partial solution; at d_model 64 with lr 3e-3,
3 of 24.

Measured 2026-11-28 on this project's 2-core machine, 24 seeds each, 2 workers
(``trainmap demo``; the same runs through ``train_run`` in a script gave
identical metrics). The cores were shared with other jobs' tests (load average
3.7-5.4, as ``uptime`` showed):

* ``modadd`` quick: 5.1 s of CPU per seed (median; max 5.7). Of one seed's
  6.5 s profiled at load 2.9: 3.7 s forward and backward, 0.3 s AdamW steps,
  1.1 s importing torch._dynamo when the first AdamW of a process is built
  (once per worker), about 1.6 s in the 100 checkpoints (grad_sym and
  dist_irr 0.6 s, weight metrics and the row 0.4 s, the resume state 0.4 s,
  evaluation 0.3 s). Every seed reaches train acc 0.99 at epoch 60-100; 23 of
  24 reach eval acc 0.9 at epoch 85-365 (median 175) and end at 0.980-1.000;
  seed 10 memorises (train acc 0.99 at epoch 85) but ends at eval acc 0.712
  (censored). ``trainmap fit`` (defaults) selects 6 states: every run goes
  S0 -> S1, then forks: 13 runs go straight to S3, 11 through S2, a detour by
  the log-rank test (its visitors converge 160 epochs later, 95% interval 85 to
  230; Holm-adjusted p = 3.8e-5).
* ``modadd_ln`` quick: 2.6 s of CPU per seed (median; max 3.4). Every seed
  reaches eval acc 0.9 at epoch 20-44 (median 29.5) and ends at 1.000. The fit
  is a chain every run follows (9 states, the sweep extended past 8 because
  the criterion was still falling): no fork, no detour (no state has 4 runs on
  each side to test). Its epochs are 11 minibatch steps, modadd's one step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainmap.trainer.config import TrainConfig
from trainmap.trainer.metrics import dist_irr, grad_sym
from trainmap.trainer.tasks import Data, Task, classification_correct, classification_loss


@dataclass
class ModularConfig(TrainConfig):
    p: int = 113
    train_fraction: float = 0.3
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layernorm: bool = False
    grad_sym_samples: int = 100  # pairs sampled per checkpoint for grad_sym
    split_heads: bool = False  # metrics per attention head (q, k, v by rows, o by columns)


PAPER = dict(
    epochs=20000, eval_every=100, batch_size=0, optimizer="adamw", lr=1e-3, weight_decay=1.0
)
PRESETS = {
    "paper": PAPER,
    "quick": dict(
        PAPER,
        p=47,
        train_fraction=0.6,
        d_model=48,
        d_mlp=192,
        lr=1e-2,
        weight_decay=1.0,
        epochs=500,
        eval_every=5,
    ),
    "tiny": dict(PAPER, p=23, train_fraction=0.5, d_model=32, d_mlp=64, epochs=60, eval_every=2),
}
PRESETS_LN = {
    "paper": dict(PAPER, layernorm=True, batch_size=256),
    # LayerNorm needs minibatches to skip the plateau (full batch it groks as late as
    # modadd); at d_model 48 or lr 3e-3 some seeds stall at a partial solution.
    "quick": dict(
        PRESETS["quick"],
        layernorm=True,
        batch_size=128,
        d_model=64,
        d_mlp=256,
        lr=2e-3,
        weight_decay=2.0,
        epochs=60,
        eval_every=1,
    ),
    "tiny": dict(PRESETS["tiny"], layernorm=True, batch_size=64),
}


def make_data(config: ModularConfig) -> Data:
    """All p*p pairs as tokens (a, b, '='), split by a permutation drawn from the seed."""
    p = config.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (p*p, 3); token p is '='
    targets = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(config.seed))
    n_train = round(config.train_fraction * p * p)
    train, test = order[:n_train], order[n_train:]
    return Data(tokens[train], targets[train], tokens[test], targets[test])


class Attention(nn.Module):
    """Multi-head attention, computed for the last position only.

    The model reads out only at '=' (the last token) and has a single layer, so
    no other position's output is ever used: queries, the output projection and
    the MLP run for that position alone (the same logits, about half the work).
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        # separate projections (no biases, as in the paper's model), so each is a
        # hook-point matrix of its own and can be split per head
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, C) at the last position
        B, T, C = x.shape
        nh, hs = self.n_heads, C // self.n_heads
        q = self.q(x[:, -1]).view(B, nh, 1, hs)
        k = self.k(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v(x).view(B, T, nh, hs).transpose(1, 2)
        # the last position may attend to every position: the causal mask is a no-op.
        # (B, nh, 1, hs) against (B, nh, T, hs): elementwise products, because a
        # batched matmul of 1 x hs by hs x 3 blocks is slow on a CPU
        att = (q * k).sum(dim=-1, keepdim=True) / math.sqrt(hs)  # (B, nh, T, 1)
        y = (att.softmax(dim=-2) * v).sum(dim=-2)  # (B, nh, hs)
        return self.o(y.reshape(B, C))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(torch.relu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, config: ModularConfig):
        super().__init__()
        norm = (lambda: nn.LayerNorm(config.d_model)) if config.layernorm else nn.Identity
        self.ln_attn, self.ln_mlp = norm(), norm()
        self.attn = Attention(config.d_model, config.n_heads)
        self.mlp = MLP(config.d_model, config.d_mlp)

    def forward(
        self, x: Tensor
    ) -> Tensor:  # (B, T, C) -> residual stream at the last position (B, C)
        last = x[:, -1] + self.attn(self.ln_attn(x))
        return last + self.mlp(self.ln_mlp(last))


class Transformer(nn.Module):
    """One-layer transformer reading ``a b =`` and predicting (a + b) mod p at '='."""

    def __init__(self, config: ModularConfig):
        super().__init__()
        self.embed = nn.Embedding(config.p + 1, config.d_model)
        self.pos_embed = nn.Embedding(3, config.d_model)
        self.blocks = nn.ModuleList([Block(config)])  # one layer: see Attention's docstring
        self.ln_final = nn.LayerNorm(config.d_model) if config.layernorm else nn.Identity()
        self.unembed = nn.Linear(config.d_model, config.p, bias=False)
        # Nanda et al. scale embeddings by 1/sqrt(d_model); PyTorch's N(0, 1) default
        # is far larger and slows grokking down.
        for embedding in (self.embed, self.pos_embed):
            nn.init.normal_(embedding.weight, std=1 / math.sqrt(config.d_model))

    def embed_tokens(self, tokens: Tensor) -> Tensor:  # (B, 3) -> (B, 3, d)
        return self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]

    def forward_embedded(self, x: Tensor) -> Tensor:  # (B, 3, d) -> logits (B, p)
        (block,) = self.blocks
        return self.unembed(self.ln_final(block(x)))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_embedded(self.embed_tokens(tokens))


def extra_metrics(model: nn.Module, config: ModularConfig, epoch: int) -> dict[str, float]:
    # a fresh, seeded sample per checkpoint: deterministic, and the same after a resume
    sample_seed = config.seed * 1_000_003 + epoch
    return {
        "grad_sym": grad_sym(model, config.p, config.grad_sym_samples, seed=sample_seed),
        "dist_irr": dist_irr(model, config.p),
    }


def split_heads(config: ModularConfig) -> dict[str, int | tuple[int, int]]:
    """With ``split_heads``, each head's slice of q, k, v (rows) and o (columns) is a matrix."""
    if not config.split_heads:
        return {}
    heads = {f"blocks.0.attn.{name}.weight": config.n_heads for name in "qkv"}
    heads["blocks.0.attn.o.weight"] = (config.n_heads, 1)  # o reads the heads along its input
    return heads


HOOK_POINTS = ["embed", "pos_embed", "blocks.0.attn", "blocks.0.mlp", "unembed"]

MODADD = Task(
    name="modadd",
    description="modular addition, 1-layer transformer without LayerNorm (grokking)",
    config_class=ModularConfig,
    presets=PRESETS,
    make_data=make_data,
    make_model=Transformer,
    loss=classification_loss,
    correct=classification_correct,
    hook_points=HOOK_POINTS,
    extra_metrics=extra_metrics,
    split_heads=split_heads,
)

MODADD_LN = dataclasses.replace(
    MODADD,
    name="modadd_ln",
    description="modular addition, 1-layer transformer with LayerNorm",
    presets=PRESETS_LN,
)
