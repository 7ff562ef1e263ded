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
        emb: (N, D) news embeddings: float32, or bfloat16 held as uint16 bits (numpy has no
            bfloat16; `ranker.train.as_tensor` views them as torch.bfloat16). See `emb_bf16`.
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
            want = (np.float32, np.uint16) if name == "emb" else (np.float32,)
            assert arr.dtype in want, f"{name}: dtype {arr.dtype}, expected one of {want}"
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
    def emb_bf16(self) -> bool:
        """The embeddings are stored as bfloat16 (half the memory of float32)."""
        return self.emb.dtype == np.uint16

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def nbytes(self) -> int:
        arrays = [self.fund, self.price, self.emb, self.returns, self.symbol_ids, self.bounds]
        if self.oracle is not None:
            arrays.append(self.oracle)
        return int(sum(a.nbytes for a in arrays))


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16, as uint16 bits, rounded to nearest even (as torch's conversion)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """bfloat16 held as uint16 bits -> float32 (exact)."""
    return (b.astype(np.uint32) << 16).view(np.float32)
