"""Modular addition (grokking): predict (a + b) mod p from the tokens ``a b =``.

The paper's setup (Hu et al. 2023, after Nanda et al. 2023): p = 113, 30% of
all p*p pairs for training, a one-layer transformer with d_model 128, 4 heads
of 32, MLP 512 with ReLU, no LayerNorm, full-batch AdamW lr 1e-3, weight decay
1.0, betas (0.9, 0.98). The LayerNorm variant adds pre-norms and a final norm
and trains with batch 256 (METHOD.md §5).

Presets
-------
``paper``  the configuration above, 20000 epochs, a checkpoint every 100.
``quick``  shows the phase transition on a CPU in 15-20 s of CPU time per
           seed: 400 full-batch epochs, a checkpoint every 4 (100 rows per run).
           Changes from the paper, each to shorten the run without removing the
           jump: p = 59 (a quarter of the pairs: cheaper steps), 60% train (more
           data shortens the plateau), d_model 64 / MLP 256 (cheaper), AdamW lr
           3e-3 and weight decay 2.0 (the weight norm, and with it the
           memorising solution, decays faster).
           Measured 2026-11-27 on 2 cores shared with other engineers' jobs
           (load average 4.5-5.5, so this process got well under 2 cores):
           ``trainmap train --task modadd --preset quick --seeds 0-7 --workers 2``
           took 2 min 50 s wall (2 min CPU); the same through ``train_seeds``
           took 3 min 46 s, and the CLI again 3 min 55 s (2 min 35 s CPU),
           with identical results each time. Every seed starts at chance (eval
           acc ~0.01) and ends at eval acc 0.966-1.000; the first checkpoint
           with eval acc >= 0.9 is at epoch 108-368 (seed 7 is the slowest, at
           368), after train acc reached 0.99 at epoch 104-364. An idle machine
           was not available to measure; by CPU time (2-2.5 min over 2 cores)
           it should take a little over 1 min there, but that is arithmetic,
           not a measurement.
``tiny``   a second or two per seed, for tests; it does not have to generalise.

The LayerNorm variant's presets are the same with LayerNorm on and batch 256
(its ``quick`` runs 300 epochs, a checkpoint every 3). Measured for seed 0 only:
22 s CPU; train acc 0.99 at epoch 36, eval acc >= 0.9 from epoch 33: no delay,
as the paper reports for LayerNorm.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainer.config import TrainConfig
from trainer.metrics import dist_irr, grad_sym
from trainer.tasks import Data, Task, classification_correct, classification_loss


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
