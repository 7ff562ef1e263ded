"""Checkpoints: weights_only round trip, identical scores, column checks; the train CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from ranker import checkpoint, schema, storage
from ranker.train import TrainConfig, fit, score
from tests.test_train import SMALL


@pytest.fixture(scope="module")
def trained(tiny_dataset):
    return fit(
        SMALL,
        TrainConfig(epochs=1, eval_every=1, batch_size=256),
        tiny_dataset.train,
        tiny_dataset.val,
    )


def test_round_trip_scores_identically(trained, tiny_dataset, tiny_market, tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, trained.model, tiny_dataset.columns, train_config={"epochs": 1},
                    universe=tiny_dataset.universe.to_dict(), metrics={"val": trained.metrics})  # fmt: skip
    raw = torch.load(path, weights_only=True)  # plain data only: no pickled classes
    assert raw["format"] == checkpoint.FORMAT and raw["universe"]["threshold"] == 50e6
    ranker = checkpoint.load(path)
    assert ranker.metrics["val"] == trained.metrics

    # Score rows straight from the parquet file (columns in file order, extra columns present).
    test = tiny_dataset.test
    frame = pq.read_table(tiny_market / schema.DATASET_FILE).to_pandas()
    frame["feature_date"] = pd.to_datetime(frame["feature_date"]).values.astype("datetime64[D]")
    want = pd.DataFrame({
        "feature_date": np.repeat(test.dates, np.diff(test.bounds)),
        "symbol": np.array(test.symbols)[test.symbol_ids],
    })  # fmt: skip
    rows = want.merge(frame, on=["feature_date", "symbol"], how="left")
    # The loaded weights are the trained ones, bit for bit: identical scores on the same arrays.
    np.testing.assert_array_equal(score(ranker.model, test), score(trained.model, test))
    # Scoring the file's rows through the frame API agrees to float32 rounding (matmul kernels
    # may sum in another order when the rows sit at another memory alignment).
    np.testing.assert_allclose(ranker.score(rows), score(trained.model, test), rtol=1e-6, atol=1e-7)


def test_score_names_missing_columns(trained, tiny_dataset, tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, trained.model, tiny_dataset.columns)
    frame = pd.DataFrame({c: [0.0] for c in tiny_dataset.columns.all if c != "ret_2d_z"})
    with pytest.raises(ValueError, match=r"lacks 1 feature column\(s\).*'ret_2d_z'"):
        checkpoint.load(path).score(frame)


def test_write_is_atomic(trained, tiny_dataset, tmp_path):
    path = tmp_path / "model.pt"

    class Boom(RuntimeError):
        pass

    def fail(_f):
        raise Boom

    with pytest.raises(Boom):
        storage.write_with(str(path), fail)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_train_cli_prints_metrics_and_oracle(tiny_market, tmp_path):
    out = tmp_path / "m.pt"
    r = _cli("train", "--data", str(tiny_market), "--out", str(out), "train.epochs=2",
             "train.eval_every=1", "model.news_hidden=16")  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # stdout holds the JSON alone; progress goes to stderr
    assert set(result) >= {"val", "test", "costs", "oracle_test", "checkpoint"}
    assert result["oracle_test"]["mean_ic"] > 0
    assert "epoch   2" in r.stderr
    assert checkpoint.load(out).model.config.news_hidden == 16


def test_train_cli_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "m.pt"
    r = _cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(out))
    assert r.returncode == 2
    assert "ml_dataset.pqt: file not found" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = _cli("train", "--data", str(tmp_path), "train.epochz=3", "model.news_alpha=big")
    assert r.returncode == 2
    assert "train.epochz: unknown key" in r.stderr and "model.news_alpha='big'" in r.stderr
