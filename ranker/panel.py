"""The Panel: one split of the data as contiguous float32 arrays sorted by date.

A Panel is what flows from the loader to training, evaluation and the Ray object store. Rows are
sorted by date; `bounds[d]:bounds[d + 1]` are the rows of `dates[d]`. Arrays may be read-only
(zero-copy views out of the object store): nothing here or downstream writes into them.

A Panel can also be a view of another's features (`subset`): its own per-row arrays (returns,
symbols, the oracle), but the feature matrices of the Panel it came from, with `rows` saying
which of their rows are its rows. Walk-forward folds are such views of one Panel of every row,
so the features are in the object store once, whatever the number of folds.
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
        rows: (N,) int64 the rows of fund/price/emb that are this Panel's rows, when it is a
            view of a larger Panel's features (`subset`); None: row i is row i.
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
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.returns)
        if self.rows is not None:
            assert self.rows.shape == (n,), f"rows: shape {self.rows.shape}, expected ({n},)"
        for name in ("fund", "price", "emb"):
            arr = getattr(self, name)
            assert arr.ndim == 2 and (arr.shape[0] == n or self.rows is not None), (
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
        """The bytes of its arrays (a view's shared feature matrices included)."""
        arrays = [self.fund, self.price, self.emb, self.returns, self.symbol_ids, self.bounds]
        arrays += [a for a in (self.oracle, self.rows) if a is not None]
        return int(sum(a.nbytes for a in arrays))

    def feature_rows(self, idx: np.ndarray | slice | None = None) -> np.ndarray | slice:
        """The rows of fund/price/emb that hold this Panel's rows `idx` (all of them: None)."""
        if self.rows is None:
            return slice(None) if idx is None else idx
        return self.rows if idx is None else self.rows[idx]

    def subset(self, idx: np.ndarray) -> Panel:
        """The Panel of its rows `idx` (ascending, so still sorted by date), sharing its feature
        matrices: a view, whose own arrays are a few bytes a row."""
        idx = np.asarray(idx, dtype=np.int64)
        days = np.repeat(np.arange(self.n_dates), np.diff(self.bounds))[idx]
        kept, counts = np.unique(days, return_counts=True)
        rows = self.rows[idx] if self.rows is not None else idx
        return Panel(
            fund=self.fund, price=self.price, emb=self.emb, returns=self.returns[idx],
            symbol_ids=self.symbol_ids[idx], dates=self.dates[kept],
            bounds=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            symbols=self.symbols, oracle=None if self.oracle is None else self.oracle[idx],
            rows=rows,
        )  # fmt: skip


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16, as uint16 bits, rounded to nearest even (as torch's conversion)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """bfloat16 held as uint16 bits -> float32 (exact)."""
    return (b.astype(np.uint32) << 16).view(np.float32)
