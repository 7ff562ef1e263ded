"""The Panel: one split of the data as contiguous float32 arrays sorted by date.

A Panel is what flows from the loader to training, evaluation and the Ray object store. Rows are
sorted by date; `bounds[d]:bounds[d + 1]` are the rows of `dates[d]`. Arrays may be read-only
(zero-copy views out of the object store): nothing here or downstream writes into them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Panel:
    """Rows of one split.

    Attributes:
        fund: (N, F) float32 fundamental features.
        price: (N, P) float32 price features.
        emb: (N, D) float32 news embeddings.
        returns: (N,) float64 simple return `exp(target_return) - 1` (not clipped).
        symbol_ids: (N,) int32 index into `symbols`.
        dates: (n_dates,) datetime64[D] unique dates, ascending.
        bounds: (n_dates + 1,) int64 row offsets of each date.
        symbols: names for `symbol_ids`.
        oracle: (N,) float64 planted expected return (synthetic markets only), else None.
    """

    fund: np.ndarray
    price: np.ndarray
    emb: np.ndarray
    returns: np.ndarray
    symbol_ids: np.ndarray
    dates: np.ndarray
    bounds: np.ndarray
    symbols: tuple[str, ...]
    oracle: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.returns)
        for name in ("fund", "price", "emb"):
            arr = getattr(self, name)
            assert arr.ndim == 2 and arr.shape[0] == n, (
                f"{name}: shape {arr.shape}, expected ({n}, k)"
            )
            assert arr.dtype == np.float32, f"{name}: dtype {arr.dtype}, expected float32"
        assert self.symbol_ids.shape == (n,), (
            f"symbol_ids: shape {self.symbol_ids.shape}, expected ({n},)"
        )
        assert self.bounds.shape == (len(self.dates) + 1,), (
            f"bounds: shape {self.bounds.shape}, expected ({len(self.dates) + 1},)"
        )
        assert self.bounds[0] == 0 and self.bounds[-1] == n, (
            f"bounds must run from 0 to {n}, got {self.bounds[0]}..{self.bounds[-1]}"
        )
        if self.oracle is not None:
            assert self.oracle.shape == (n,), f"oracle: shape {self.oracle.shape}, expected ({n},)"

    def __len__(self) -> int:
        return len(self.returns)

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def nbytes(self) -> int:
        arrays = [self.fund, self.price, self.emb, self.returns, self.symbol_ids, self.bounds]
        if self.oracle is not None:
            arrays.append(self.oracle)
        return int(sum(a.nbytes for a in arrays))
