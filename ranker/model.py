"""MultiBranchRanker: fundamental, price and news encoders fused into one score per row.

The structure is the research notebook's: three two-layer encoders (Linear-ReLU-Dropout-Linear-
ReLU), the news latent scaled by `news_alpha`, and a fused head (Linear-ReLU-Dropout(0.1)-Linear).
Pairs are scored as `s_i - s_j`, the logit of P(i beats j).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

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
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("dropout"):
                if not 0.0 <= v < 1.0:
                    raise ValueError(f"model.{f.name}={v!r}: a dropout must be in [0, 1)")
            elif f.type == "int" and (not isinstance(v, int) or v < 1):
                raise ValueError(f"model.{f.name}={v!r}: must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**d)


class Dropout(nn.Module):
    """Inverted dropout (as nn.Dropout) whose CPU masks come from numpy's PCG64.

    Same semantics as nn.Dropout: in training each unit is kept with probability 1 - p and
    scaled by 1 / (1 - p); in eval it is the identity. torch's CPU Bernoulli sampler spends
    about as long drawing the masks as the matmuls of this model take, so on the CPU the mask is
    drawn as 16-bit random integers from a numpy Generator (p is exact to 1/65536). On a GPU
    torch's own dropout is used. The generator is shared by every Dropout of a model and
    reseeded by `MultiBranchRanker.seed_dropout`, so training stays reproducible.
    """

    def __init__(self, p: float, rng: list[np.random.Generator]) -> None:
        super().__init__()
        self.p = p
        self._rng = rng  # a one-element list shared across the model's Dropouts
        self._threshold = round(p * 65536)
        self._scale = np.float32(1.0 / (1.0 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        bits = np.frombuffer(self._rng[0].bytes(2 * x.numel()), dtype=np.uint16)
        # One numpy pass from random bits to the scaled float mask: keep / (1 - p) or 0.
        mask = np.multiply(bits >= self._threshold, self._scale, dtype=np.float32)
        return x * torch.from_numpy(mask).view(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _encoder(
    n_in: int, hidden: int, latent: int, dropout: float, rng: list[np.random.Generator]
) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        Dropout(dropout, rng),
        nn.Linear(hidden, latent),
        nn.ReLU(),
    )


class MultiBranchRanker(nn.Module):
    """Scores rows; higher means a higher expected return relative to the same day's others."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self._rng = [np.random.default_rng(0)]
        self.fund_encoder = _encoder(
            c.n_fundamental_features, c.fund_hidden, c.fundamental_latent,
            c.fundamental_dropout, self._rng,
        )  # fmt: skip
        self.price_encoder = _encoder(
            c.n_price_features, c.price_hidden, c.price_latent, c.price_dropout, self._rng
        )
        self.news_encoder = _encoder(
            c.n_embedding_dim, c.news_hidden, c.news_latent, c.news_dropout, self._rng
        )
        fused = c.fundamental_latent + c.price_latent + c.news_latent
        self.output_head = nn.Sequential(
            nn.Linear(fused, HEAD_HIDDEN),
            nn.ReLU(),
            Dropout(HEAD_DROPOUT, self._rng),
            nn.Linear(HEAD_HIDDEN, 1),
        )

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
        h_f = self.fund_encoder(fund)  # (B, F) -> (B, fundamental_latent)
        h_p = self.price_encoder(price)  # (B, 9) -> (B, price_latent)
        h_n = self.news_encoder(emb) * c.news_alpha  # (B, 768) -> (B, news_latent)
        h = torch.cat([h_f, h_p, h_n], dim=-1)  # (B, fused)
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
