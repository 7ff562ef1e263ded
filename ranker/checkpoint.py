"""The saved model: weights plus everything needed to use and reproduce it, no pickled classes.

A checkpoint is a plain dict of tensors and Python values, loadable with
`torch.load(path, weights_only=True)`; `load(path).score(frame)` scores new rows. The model is a
`MultiBranchRanker` or an `Ensemble` of them (`members` > 1: the mean of their scores).
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from ranker import storage
from ranker.model import Ensemble, ModelConfig, MultiBranchRanker
from ranker.schema import FeatureColumns

if TYPE_CHECKING:  # a DataFrame is scored by duck typing; the training path never needs pandas
    import pandas as pd

FORMAT = "liquid-ranker/1"


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
        self.model.eval()
        out = np.empty(len(fund), dtype=np.float64)
        for s in range(0, len(fund), batch):
            out[s : s + batch] = self.model(
                torch.from_numpy(price[s : s + batch]),
                torch.from_numpy(fund[s : s + batch]),
                torch.from_numpy(emb[s : s + batch]),
            ).numpy()
        return out


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
