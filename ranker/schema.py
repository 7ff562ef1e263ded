"""Column names of the two input files and how feature columns are resolved.

`ml_dataset.pqt`: one row per (feature_date, symbol) with `target_return` (a log return), the
nine price features, fundamental features (every other `*_z` but `news_count_z`) and the news
embedding `emb_0..emb_{D-1}` (all zero when the row has no news).
`prices.pqt`: one row per (symbol, date) with `close` and `volume`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DATASET_FILE = "ml_dataset.pqt"
PRICES_FILE = "prices.pqt"
ORACLE_FILE = "oracle.pqt"  # synthetic markets only: the planted expected return per row

DATE = "feature_date"
SYMBOL = "symbol"
TARGET = "target_return"
ORACLE = "expected_return"

PRICE_DATE = "date"
CLOSE = "close"
VOLUME = "volume"

PRICE_FEATURES: tuple[str, ...] = (
    "overnight_gap_z",
    "intraday_ret_z",
    "ret_1d_z",
    "ret_2d_z",
    "ret_3d_z",
    "ret_5d_z",
    "vol_5d_z",
    "dist_from_high_5d_z",
    "dist_from_low_5d_z",
)
NEWS_COUNT = "news_count_z"
EMB_PREFIX = "emb_"
_EMB_RE = re.compile(r"^emb_(\d+)$")


@dataclass(frozen=True)
class FeatureColumns:
    """The resolved feature columns of a dataset, in the order the model consumes them."""

    fund: tuple[str, ...]
    price: tuple[str, ...]
    emb: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.fund + self.price + self.emb

    def to_dict(self) -> dict[str, list[str]]:
        return {"fund": list(self.fund), "price": list(self.price), "emb": list(self.emb)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[str]]) -> FeatureColumns:
        return cls(fund=tuple(d["fund"]), price=tuple(d["price"]), emb=tuple(d["emb"]))


def resolve_features(columns: Sequence[str], source: str = DATASET_FILE) -> FeatureColumns:
    """Resolve feature columns the way the research notebook does.

    Price features are the nine named ones; every other `*_z` column except `news_count_z` is
    fundamental (in file order); `emb_*` columns are taken in numeric order.

    Raises:
        ValueError: a named price feature is missing, there are no fundamental or embedding
            columns, or an `emb_*` column has a non-integer suffix or the numbers have gaps.
    """
    cols = list(columns)
    present = set(cols)
    missing = [c for c in PRICE_FEATURES if c not in present]
    if missing:
        raise ValueError(
            f"{source}: missing price feature column(s) {missing}; the nine price features "
            f"{list(PRICE_FEATURES)} must all be present. Fix: add them (z-scored) to the file."
        )
    fund = tuple(
        c for c in cols if c.endswith("_z") and c not in PRICE_FEATURES and c != NEWS_COUNT
    )
    if not fund:
        raise ValueError(
            f"{source}: no fundamental feature columns (every `*_z` column other than the price "
            f"features and {NEWS_COUNT!r} is fundamental). Fix: add at least one `*_z` column."
        )
    emb_cols = [c for c in cols if c.startswith(EMB_PREFIX)]
    bad = [c for c in emb_cols if not _EMB_RE.match(c)]
    if bad:
        raise ValueError(
            f"{source}: embedding column(s) {bad[:5]} do not have the form emb_<integer>. "
            f"Fix: rename them emb_0..emb_<D-1>."
        )
    if not emb_cols:
        raise ValueError(
            f"{source}: no news embedding columns `emb_0..emb_<D-1>`. Fix: add the embedding "
            f"columns (all zero for rows without news)."
        )
    emb = sorted(emb_cols, key=lambda c: int(c[len(EMB_PREFIX) :]))
    numbers = [int(c[len(EMB_PREFIX) :]) for c in emb]
    if numbers != list(range(len(numbers))):
        gap = next(i for i, n in enumerate(numbers) if n != i)
        raise ValueError(
            f"{source}: embedding columns must be emb_0..emb_{len(numbers) - 1} without gaps; "
            f"emb_{gap} is missing. Fix: renumber the embedding columns."
        )
    return FeatureColumns(fund=fund, price=PRICE_FEATURES, emb=tuple(emb))
