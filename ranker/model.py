"""MultiBranchRanker: fundamental, price and news encoders fused into one score per row.

The structure is the research notebook's: three two-layer encoders (Linear-ReLU-Dropout-Linear-
ReLU), the news latent scaled by `news_alpha`, and a fused head (Linear-ReLU-Dropout(0.1)-Linear).
Pairs are scored as `s_i - s_j`, the logit of P(i beats j). Training on the CPU runs the same
arithmetic as one hand-written forward and backward (`_fused_loss_and_grads`); evaluation and
GPUs run the modules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranker.config import ConfigError, int_fields, strict_from_dict

HEAD_HIDDEN = 32
HEAD_DROPOUT = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Input sizes come from the data; the rest is searched."""

    n_fundamental_features: int = 19
    n_price_features: int = 9
    n_embedding_dim: int = 768
    fund_hidden: int = 64
    price_hidden: int = 32
    news_hidden: int = 128
    fundamental_latent: int = 32
    price_latent: int = 16
    news_latent: int = 32
    fundamental_dropout: float = 0.6
    price_dropout: float = 0.3
    news_dropout: float = 0.1
    news_alpha: float = 0.8

    def __post_init__(self) -> None:
        errors = []
        for name in int_fields(ModelConfig):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                errors.append(f"model.{name}={v!r}: must be a positive integer")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("dropout") and not (isinstance(v, int | float) and 0.0 <= v < 1.0):
                errors.append(f"model.{f.name}={v!r}: a dropout must be in [0, 1)")
        a = self.news_alpha
        if not (isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)
                and a >= 0):  # fmt: skip
            errors.append(f"model.news_alpha={a!r}: must be a finite number >= 0")
        if errors:
            raise ConfigError(errors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return strict_from_dict(cls, d, "model")


def keep_mask(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """(n,) float32 inverted-dropout mask: 1 / (1 - p) with probability 1 - p, else 0.

    Drawn as 16-bit integers (p is exact to 1/65536) from the generator's raw 64-bit output, one
    numpy pass: torch's CPU Bernoulli sampler spends about as long as this model's matmuls.
    """
    bits = rng.bit_generator.random_raw((n + 3) // 4).view(np.uint16)[:n]
    return np.multiply(bits >= round(p * 65536), np.float32(1 / (1 - p)), dtype=np.float32)


class Dropout(nn.Module):
    """Inverted dropout (as nn.Dropout) whose CPU masks come from numpy's PCG64 (`keep_mask`).

    Same semantics as nn.Dropout: in training each unit is kept with probability 1 - p and
    scaled by 1 / (1 - p); in eval it is the identity. On a GPU torch's own dropout is used. The
    generator is shared by every Dropout of a model and reseeded by
    `MultiBranchRanker.seed_dropout`, so training stays reproducible.
    """

    def __init__(self, p: float, rng: list[np.random.Generator]) -> None:
        super().__init__()
        self.p = p
        self._rng = rng  # a one-element list shared across the model's Dropouts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        return x * torch.from_numpy(keep_mask(self._rng[0], x.numel(), self.p)).view(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Block(nn.Sequential):
    """Linear - ReLU - Dropout - Linear (- ReLU): a Sequential, so its state-dict keys are the
    notebook's (`0.weight`, `3.bias`). Its layers are named here and nowhere else (`hidden`,
    `dropout`, and `second`, which `Encoder` calls `latent` and `Head` calls `out`), so code that
    needs a layer, the fused CPU step, asks for it by name."""

    @property
    def hidden(self) -> nn.Linear:
        return self[0]

    @property
    def dropout(self) -> Dropout:
        return self[2]

    @property
    def second(self) -> nn.Linear:
        return self[3]


class Encoder(_Block):
    """Linear(n_in, hidden) - ReLU - Dropout - Linear(hidden, latent) - ReLU."""

    def __init__(
        self, n_in: int, hidden: int, latent: int, dropout: float, rng: list[np.random.Generator]
    ) -> None:
        super().__init__(
            nn.Linear(n_in, hidden), nn.ReLU(), Dropout(dropout, rng), nn.Linear(hidden, latent),
            nn.ReLU(),
        )  # fmt: skip

    @property
    def latent(self) -> nn.Linear:
        return self.second


class Head(_Block):
    """Linear(fused, 32) - ReLU - Dropout(0.1) - Linear(32, 1): the score from the latents."""

    def __init__(self, fused: int, rng: list[np.random.Generator]) -> None:
        super().__init__(
            nn.Linear(fused, HEAD_HIDDEN), nn.ReLU(), Dropout(HEAD_DROPOUT, rng),
            nn.Linear(HEAD_HIDDEN, 1),
        )  # fmt: skip

    @property
    def out(self) -> nn.Linear:
        return self.second


class MultiBranchRanker(nn.Module):
    """Scores rows; higher means a higher expected return relative to the same day's others."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        rng = [np.random.default_rng(0)]  # one generator, shared by every Dropout
        self._rng = rng
        self.fund_encoder = Encoder(
            c.n_fundamental_features, c.fund_hidden, c.fundamental_latent, c.fundamental_dropout,
            rng,
        )  # fmt: skip
        self.price_encoder = Encoder(
            c.n_price_features, c.price_hidden, c.price_latent, c.price_dropout, rng
        )
        self.news_encoder = Encoder(
            c.n_embedding_dim, c.news_hidden, c.news_latent, c.news_dropout, rng
        )
        self.output_head = Head(c.fundamental_latent + c.price_latent + c.news_latent, rng)
        self._n_params = len(list(self.parameters()))

    def branches(self) -> tuple[tuple[Encoder, float], ...]:
        """(encoder, latent scale) in the order their latents fill the head's input: fund,
        price, news (scaled by news_alpha). `forward` and the fused step both read this."""
        return (
            (self.fund_encoder, 1.0),
            (self.price_encoder, 1.0),
            (self.news_encoder, self.config.news_alpha),
        )

    @property
    def dropout_rng(self) -> np.random.Generator:
        """The generator every Dropout of the model draws its CPU masks from."""
        return self._rng[0]

    @classmethod
    def from_state(
        cls, config: ModelConfig | dict[str, Any], state: dict[str, torch.Tensor]
    ) -> MultiBranchRanker:
        """The model of a saved config and state dict, on the CPU, in eval mode."""
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        model = cls(cfg)
        model.load_state_dict(state)
        model.eval()
        return model

    def seed_dropout(self, seed: Any) -> None:
        """Reseed the dropout masks (anything np.random.default_rng takes)."""
        self._rng[0] = np.random.default_rng(seed)

    def forward(self, price: torch.Tensor, fund: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        c = self.config
        assert fund.shape[-1] == c.n_fundamental_features, (
            f"fund has {fund.shape[-1]} features, model expects {c.n_fundamental_features}"
        )
        assert price.shape[-1] == c.n_price_features, (
            f"price has {price.shape[-1]} features, model expects {c.n_price_features}"
        )
        assert emb.shape[-1] == c.n_embedding_dim, (
            f"emb has {emb.shape[-1]} dims, model expects {c.n_embedding_dim}"
        )
        latents = []
        for (encoder, alpha), x in zip(self.branches(), (fund, price, emb), strict=True):
            z = encoder(x)  # (B, features) -> (B, latent)
            latents.append(z if alpha == 1.0 else z * alpha)
        h = torch.cat(latents, dim=-1)  # (B, fused)
        return self.output_head(h).squeeze(-1)  # (B,)

    def pair_logits(
        self,
        price: torch.Tensor,
        fund: torch.Tensor,
        emb: torch.Tensor,
    ) -> torch.Tensor:
        """Logit of P(i beats j) for a stacked batch: rows [0, B) are the i's, [B, 2B) the j's.

        One forward over both sides is the notebook's two forwards (dropout masks are drawn per
        row either way) at half the kernel launches.
        """
        s = self.forward(price, fund, emb)  # (2B,)
        b = s.shape[0] // 2
        return s[:b] - s[b:]  # (B,)

    def pair_loss(
        self, price: torch.Tensor, fund: torch.Tensor, emb: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Mean BCE-with-logits of `pair_logits` against the (smoothed) targets, a 0-dim tensor."""
        return F.binary_cross_entropy_with_logits(self.pair_logits(price, fund, emb), target)

    def pair_loss_backward(
        self, price: torch.Tensor, fund: torch.Tensor, emb: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """`pair_loss(...).backward()`: accumulates the gradients into .grad, returns the loss.

        Training on the CPU (with news_alpha > 0, which it folds into a matmul), forward and
        backward run in `_fused_loss_and_grads` instead: the same arithmetic, hand-written,
        without autograd. The returned loss carries no graph. A bfloat16 `emb` makes the news
        encoder's first matmul (and its weight gradient) a bf16 matmul with fp32 accumulation;
        the weights, gradients and the rest stay fp32 (on a GPU: autocast).
        """
        if self.training and emb.device.type == "cpu" and self.config.news_alpha > 0:
            loss, grads = _fused_loss_and_grads(self, price, fund, emb, target)
            if len(grads) != self._n_params:
                raise RuntimeError(
                    f"the fused CPU step computed {len(grads)} gradients for a model with "
                    f"{self._n_params} parameters: a layer was added to MultiBranchRanker but "
                    f"not to _fused_loss_and_grads"
                )
            for p, g in grads:
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g
            return loss
        if emb.dtype == torch.bfloat16:
            # No cast cache: a step captured as a CUDA graph must recompute its casts.
            with torch.autocast(emb.device.type, dtype=torch.bfloat16, cache_enabled=False):
                loss = self.pair_loss(price, fund, emb, target)
        else:
            loss = self.pair_loss(price, fund, emb, target)
        loss.backward()
        return loss.detach()


@torch.no_grad()
def _fused_loss_and_grads(
    model: MultiBranchRanker,
    price: torch.Tensor,
    fund: torch.Tensor,
    emb: torch.Tensor,
    target: torch.Tensor,
) -> tuple[torch.Tensor, list[tuple[nn.Parameter, torch.Tensor]]]:
    """`pair_loss` in training, and (parameter, gradient) for every parameter of the model.

    At 1,024 rows a step, the module path's ~40 small ops and autograd nodes each way cost about
    as much as all its matmuls but the news encoder's first. Here ReLU and dropout are one
    multiply and one in-place clamp, the encoders write their latents straight into the head's
    input, news_alpha is folded into the news latent's matmul (relu(a z) = a relu(z), a > 0), and
    each gradient is one op (none for the inputs). Layers are reached by name
    (`MultiBranchRanker.branches`, `Encoder.hidden`/`.latent`, `Head.hidden`/`.out`) and the
    masks drawn from the model's generator in the modules' order (fund, price, news, head), so
    after the same `seed_dropout` both paths drop the same units; tests/test_fused.py checks the
    loss and every gradient against autograd through the modules.
    """
    rng = model.dropout_rng
    rows, pairs = emb.shape[0], target.shape[0]
    assert rows == 2 * pairs, f"{rows} rows for {pairs} pairs: expected the i's, then the j's"
    branches = [(enc, alpha, x) for (enc, alpha), x in
                zip(model.branches(), (fund, price, emb), strict=True)]  # fmt: skip
    fused = torch.empty(rows, sum(enc.latent.out_features for enc, _, _ in branches))  # (2B, fused)
    hidden, start = [], 0
    for enc, alpha, x in branches:
        w1, b1, w2, b2 = enc.hidden.weight, enc.hidden.bias, enc.latent.weight, enc.latent.bias
        p = enc.dropout.p
        if x.dtype == torch.bfloat16:  # bf16 matmul (fp32 accumulation), the rest in fp32
            h = torch.mm(x, w1.t().to(torch.bfloat16)).float().add_(b1)
        else:
            h = torch.addmm(b1, x, w1.t())  # (2B, in) -> (2B, hidden)
        if p > 0:
            h.mul_(torch.from_numpy(keep_mask(rng, h.numel(), p)).view(h.shape))
        h.relu_()  # relu(a) * mask == relu(a * mask): the mask is >= 0
        out = fused[:, start : start + w2.shape[0]]  # (2B, hidden) -> (2B, latent), in place
        torch.addmm(b2, h, w2.t(), beta=alpha, alpha=alpha, out=out).relu_()
        hidden.append(h)
        start += w2.shape[0]
    head = model.output_head
    w1, b1, w2, b2 = head.hidden.weight, head.hidden.bias, head.out.weight, head.out.bias
    p_head = head.dropout.p
    h_head = torch.addmm(b1, fused, w1.t())  # (2B, fused) -> (2B, 32)
    h_head.mul_(torch.from_numpy(keep_mask(rng, h_head.numel(), p_head)).view(h_head.shape))
    h_head.relu_()
    s = torch.addmm(b2, h_head, w2.t())  # (2B, 1)
    diff = s[:pairs] - s[pairs:]  # (B, 1): the logit of P(i beats j)
    loss = F.binary_cross_entropy_with_logits(diff.view(pairs), target)

    grads: list[tuple[nn.Parameter, torch.Tensor]] = []
    relu_grad = torch.ops.aten.threshold_backward  # (g, y, 0): g where y > 0, else 0
    # d loss / d diff = (sigmoid(diff) - target) / B: s_i gets it, s_j its negative.
    g = torch.sigmoid(diff).sub_(target.view(pairs, 1)).div_(pairs)  # (B, 1)
    g_s = torch.cat((g, g.neg()))  # (2B, 1)
    grads += [(w2, g_s.t().mm(h_head)), (b2, g_s.sum(0))]
    g_h = relu_grad(g_s * w2, h_head, 0).mul_(1 / (1 - p_head))  # (2B, 32)
    grads += [(w1, g_h.t().mm(fused)), (b1, g_h.sum(0))]
    g_fused = g_h.mm(w1)  # (2B, fused)
    start = 0
    for (enc, alpha, x), h in zip(branches, hidden, strict=True):
        w2 = enc.latent.weight
        cols = slice(start, start + w2.shape[0])
        g_z = relu_grad(g_fused[:, cols], fused[:, cols], 0)  # (2B, latent)
        if alpha != 1:
            g_z.mul_(alpha)
        grads += [(w2, g_z.t().mm(h)), (enc.latent.bias, g_z.sum(0))]
        g_a = relu_grad(g_z.mm(w2), h, 0)  # (2B, hidden)
        if enc.dropout.p > 0:
            g_a.mul_(1 / (1 - enc.dropout.p))
        grads += [(enc.hidden.weight, _weight_grad(g_a, x)), (enc.hidden.bias, g_a.sum(0))]
        start += w2.shape[0]
    return loss, grads


def _weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, out), (B, in) -> (out, in): g^T x, in fp32. With fewer inputs than outputs (the 19
    and 9 features) MKL is ~2-4x faster at (x^T g)^T, even with the copy of the small transpose.
    A bf16 input makes it a bf16 matmul (fp32 accumulation) into an fp32 gradient."""
    if x.dtype == torch.bfloat16:
        return g.to(torch.bfloat16).t().mm(x).float()
    if x.shape[1] < g.shape[1]:
        return x.t().mm(g).t().contiguous()
    return g.t().mm(x)


class Ensemble(nn.Module):
    """Members of one config trained with different seeds, scored as the mean of their scores:
    the final model, so that it is not one seed's luck. Scores like a MultiBranchRanker."""

    def __init__(self, config: ModelConfig, n_members: int) -> None:
        super().__init__()
        if n_members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {n_members}")
        self.members = nn.ModuleList(MultiBranchRanker(config) for _ in range(n_members))

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    @classmethod
    def from_states(
        cls, config: ModelConfig | dict[str, Any], states: list[dict[str, torch.Tensor]]
    ) -> Ensemble:
        """The ensemble of the members' saved state dicts, on the CPU, in eval mode."""
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        model = cls(cfg, len(states))
        for member, state in zip(model.members, states, strict=True):
            member.load_state_dict(state)
        model.eval()
        return model

    def forward(self, price: torch.Tensor, fund: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([m(price, fund, emb) for m in self.members])  # (members, B)
        return scores.mean(dim=0)  # (B,)
