"""The saved model: weights plus everything needed to use and reproduce it, no pickled classes.

A checkpoint is a plain dict of tensors and Python values, loadable with
`torch.load(path, weights_only=True)`; `load(path).score(frame)` scores new rows, and
`load(path).score_source(data_dir)` every row of a data directory (what `liquid-search score`
writes). The model is a `MultiBranchRanker` or an `Ensemble` of them (`members` > 1: the mean of
their scores).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ranker import storage
from ranker.inputs import DataError, open_inputs, read_features, read_keys
from ranker.model import Ensemble, ModelConfig, MultiBranchRanker
from ranker.schema import FeatureColumns
from ranker.train import as_tensor
from ranker.universe import UniverseConfig, liquid_rows

if TYPE_CHECKING:  # a DataFrame is scored by duck typing; the training path never needs pandas
    import pandas as pd

FORMAT = "liquid-ranker/1"
# Rows of features `score_source` decodes at a time (whole row groups, so each is read once):
# about 400 MB of float32 at the notebook's 800 columns.
CHUNK_ROWS = 1 << 17


def save(
    path: str | os.PathLike,
    model: MultiBranchRanker | Ensemble,
    columns: FeatureColumns,
    *,
    train_config: dict[str, Any] | None = None,
    universe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (never a half-written file under `path`) to a local path or
    a URI (s3://, gs://). An ensemble of one member (final.seeds=1) is saved as that member."""
    if isinstance(model, Ensemble) and len(model.members) == 1:
        model = model.members[0]
    payload = {
        "format": FORMAT,
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model_config": model.config.to_dict(),
        "members": len(model.members) if isinstance(model, Ensemble) else 1,
        "train_config": dict(train_config or {}),
        "columns": columns.to_dict(),
        "universe": dict(universe or {}),
        "metrics": metrics or {},
        "extra": extra or {},
    }
    storage.write_with(os.fspath(path), lambda f: torch.save(payload, f))


@dataclass(frozen=True, eq=False)
class ScoredRows:
    """The rows of a data directory a model scored (`Ranker.score_source`), in file order."""

    days: np.ndarray  # (n,) datetime64[D] feature_date
    symbols: pa.Array  # (n,) the rows' symbols
    scores: np.ndarray  # (n,) float64
    liquid: np.ndarray  # (n,) bool: in the model's universe, its rule applied to this data's prices
    source: str  # the dataset file scored

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Ranker:
    """A loaded checkpoint, ready to score rows."""

    model: MultiBranchRanker | Ensemble
    columns: FeatureColumns
    payload: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.payload["metrics"]

    @property
    def universe(self) -> dict[str, Any]:
        return self.payload["universe"]

    @property
    def universe_config(self) -> UniverseConfig:
        """The universe rule the model was trained under (the default rule when unrecorded)."""
        return UniverseConfig(**self.universe) if self.universe else UniverseConfig()

    @property
    def bf16_inputs(self) -> bool:
        """The model was trained on bfloat16 embeddings (`train.precision: bf16`): scoring
        rounds them the same way, so its scores are those of its own run."""
        return self.payload["train_config"].get("precision") == "bf16"

    def check_columns(self, data: FeatureColumns, where: str) -> None:
        """Raises DataError (one line, naming `where`) unless the data's resolved feature
        columns are the model's, in any order: the same embedding width, fundamental and
        price columns."""
        mine = self.columns
        if len(data.emb) != len(mine.emb):
            raise DataError(
                f"{where}: news embeddings emb_0..emb_{len(data.emb) - 1} ({len(data.emb)} wide), "
                f"but the model was trained on {len(mine.emb)}. Fix: score data whose embeddings "
                f"come from the model's embedding model."
            )
        missing = [c for c in mine.fund + mine.price if c not in set(data.fund + data.price)]
        extra = [c for c in data.fund + data.price if c not in set(mine.fund + mine.price)]
        if missing or extra:
            raise DataError(
                f"{where}: the feature columns are not the model's: {len(missing)} missing "
                f"{missing[:3]}, {len(extra)} the model does not know {extra[:3]}. Fix: score "
                f"data with the columns the model was trained on."
            )

    @torch.no_grad()
    def score(self, frame: pd.DataFrame | pa.Table, batch: int = 8192) -> np.ndarray:
        """Scores (N,) of the rows of `frame`, which must hold every feature column.

        Raises:
            ValueError: a feature column is missing, not numeric, or holds a non-finite value.
        """
        names = list(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
        missing = [c for c in self.columns.all if c not in names]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ValueError(
                f"the frame lacks {len(missing)} feature column(s) the model was trained on: "
                f"{missing[:5]}{more}. Fix: pass a frame with the training data's columns."
            )

        def block(cols: tuple[str, ...]) -> np.ndarray:
            if isinstance(frame, pa.Table):
                arrs = [frame.column(c).to_numpy(zero_copy_only=False) for c in cols]
            else:
                arrs = [frame[c].to_numpy() for c in cols]
            for c, a in zip(cols, arrs, strict=True):
                if not np.issubdtype(a.dtype, np.number):
                    raise ValueError(f"column {c!r} has dtype {a.dtype}, expected numbers")
            out = np.ascontiguousarray(np.stack(arrs, axis=1), dtype=np.float32)
            bad = ~np.isfinite(out)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ValueError(
                    f"column {cols[c]!r} row {r} is {out[r, c]}: features must be finite"
                )
            return out

        fund, price, emb = (
            block(self.columns.fund),
            block(self.columns.price),
            block(self.columns.emb),
        )
        return self.score_arrays(fund, price, emb, batch)

    @torch.no_grad()
    def score_arrays(
        self, fund: np.ndarray, price: np.ndarray, emb: np.ndarray, batch: int = 8192
    ) -> np.ndarray:
        """Scores (N,) of row-major feature blocks in the model's column order, computed as
        `ranker.train.score` computes a Panel's (emb may be bfloat16 bits, as `Panel.emb`)."""
        self.model.eval()
        f, p, e = as_tensor(fund), as_tensor(price), as_tensor(emb)
        out = np.empty(len(f), dtype=np.float64)
        for s in range(0, len(f), batch):
            part = [t[s : s + batch].float() for t in (p, f, e)]
            out[s : s + batch] = self.model(*part).numpy()
        return out

    def score_source(
        self,
        source: str | os.PathLike,
        *,
        start: np.datetime64 | None = None,
        end: np.datetime64 | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ScoredRows:
        """Score every row of a data directory (ml_dataset.pqt and prices.pqt), or those dated
        `start` to `end` (both included), and flag the rows of the model's universe.

        The files are read and checked as a training load reads them (`ranker.inputs`), their
        feature columns must be the model's (`check_columns`), and the features are decoded a
        few row groups at a time (`CHUNK_ROWS`), never the whole table.

        Raises:
            DataError: a bad file, columns that are not the model's, or no row in the dates.
        """
        say = log or (lambda _msg: None)
        inputs = open_inputs(os.fspath(source))
        self.check_columns(inputs.columns, inputs.dataset_uri)
        keys = read_keys(inputs, threads=True)
        select = np.ones(len(keys.days), dtype=bool)
        if start is not None:
            select &= keys.days >= start.astype("datetime64[D]").astype(np.int64)
        if end is not None:
            select &= keys.days <= end.astype("datetime64[D]").astype(np.int64)
        if not select.any():
            first, last = (np.datetime64(int(d), "D") for d in (keys.days.min(), keys.days.max()))
            raise DataError(
                f"{inputs.dataset_uri}: no row dated {_day(start)} to {_day(end)}; its "
                f"feature dates run from {first} to {last}. Fix: ask for dates it has."
            )
        liquid = liquid_rows(self.universe_config, keys.p_sym, keys.p_days,
                             keys.close * keys.volume, keys.sym, keys.days, len(keys.symbols))  # fmt: skip
        scores = np.full(len(keys.days), np.nan)
        n, done = int(select.sum()), 0
        for part in _row_group_chunks(inputs.dataset, select):
            feats = read_features(inputs.dataset, inputs.dataset_uri, self.columns, part, False,
                                  keys, lambda _msg: None, True, self.bf16_inputs)  # fmt: skip
            scores[feats.rows] = self.score_arrays(feats.fund, feats.price, feats.emb)
            done += len(feats.rows)
            say(f"scored {done:,} of {n:,} rows")
        rows = np.flatnonzero(select)
        return ScoredRows(days=keys.days[rows].astype("datetime64[D]"),
                          symbols=keys.symbol_array.take(pa.array(keys.sym[rows])),
                          scores=scores[rows], liquid=liquid[rows], source=inputs.dataset_uri)  # fmt: skip


def _day(d: np.datetime64 | None) -> str:
    return "..." if d is None else str(d.astype("datetime64[D]"))


def _row_group_chunks(pf: pq.ParquetFile, select: np.ndarray) -> Iterator[np.ndarray]:
    """`select` cut into masks of runs of whole row groups holding about `CHUNK_ROWS` selected
    rows each (a row group larger than that is one chunk): each group is decoded once."""
    md = pf.metadata
    edges = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    counts = np.concatenate([[0], np.cumsum(select)])
    lo = 0
    for i in range(1, len(edges)):
        if counts[edges[i]] - counts[edges[lo]] >= CHUNK_ROWS or i == len(edges) - 1:
            a, b = edges[lo], edges[i]
            if counts[b] > counts[a]:
                part = np.zeros_like(select)
                part[a:b] = select[a:b]
                yield part
            lo = i


def load(path: str | os.PathLike) -> Ranker:
    """Load a checkpoint written by `save` from a path or URI (weights_only: no code runs).

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: the file is not a checkpoint of this format.
    """
    data = storage.read_bytes(os.fspath(path))
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    n = int(payload.get("members", 1))
    if n == 1:
        model = MultiBranchRanker.from_state(payload["model_config"], payload["model_state"])
    else:
        model = Ensemble(ModelConfig.from_dict(payload["model_config"]), n)
        model.load_state_dict(payload["model_state"])
        model.eval()
    return Ranker(model, FeatureColumns.from_dict(payload["columns"]), payload)
