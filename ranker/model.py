"""MultiBranchRanker: fundamental, price and news encoders fused into one score per row.

The structure is the research notebook's: three two-layer encoders (Linear-ReLU-Dropout-Linear-
ReLU), the news latent scaled by `news_alpha`, and a fused head (Linear-ReLU-Dropout(0.1)-Linear).
Pairs are scored as `s_i - s_j`, the logit of P(i beats j).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

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


def _encoder(n_in: int, hidden: int, latent: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, latent),
        nn.ReLU(),
    )


class MultiBranchRanker(nn.Module):
    """Scores rows; higher means a higher expected return relative to the same day's others."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.fund_encoder = _encoder(
            c.n_fundamental_features, c.fund_hidden, c.fundamental_latent, c.fundamental_dropout
        )
        self.price_encoder = _encoder(
            c.n_price_features, c.price_hidden, c.price_latent, c.price_dropout
        )
        self.news_encoder = _encoder(
            c.n_embedding_dim, c.news_hidden, c.news_latent, c.news_dropout
        )
        fused = c.fundamental_latent + c.price_latent + c.news_latent
        self.output_head = nn.Sequential(
            nn.Linear(fused, HEAD_HIDDEN),
            nn.ReLU(),
            nn.Dropout(HEAD_DROPOUT),
            nn.Linear(HEAD_HIDDEN, 1),
        )

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
