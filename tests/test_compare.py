"""`liquid-search score` and existing models beside the final one (`final.compare`): the scores
file's checks, scoring a data directory, and two real runs, one compared with the other's
scores (from its scores file and from its run directory, added by `resume`)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranker.backtest import backtest
from ranker.costs import CostModel
from ranker.data import DataError
from search import api, cli
from search.analysis import load_test_panel
from search.compare import CompareError, check, paired_differences, read_scores, series_metrics
from search.errors import SpecError
from search.rundir import RunDir, Series
from tests.conftest import Lines, smoke_spec

SMALL = {"stages": "[{name: architecture, grid: {latent_scale: [0.5]}}]", "final.seeds": "1",
         "final.baseline": "false", "final.compare_base": "false"}  # fmt: skip


def _write(path: Path, days: np.ndarray, symbols: list[str], scores: np.ndarray) -> str:
    pq.write_table(pa.table({"feature_date": pa.array(days, pa.date32()),
                             "symbol": pa.array(symbols), "score": pa.array(scores)}), path)  # fmt: skip
    return str(path)


def _rows(panel) -> tuple[np.ndarray, list[str]]:
    days = np.repeat(panel.dates, np.diff(panel.bounds)).astype("datetime64[D]")
    return days, [panel.symbols[i] for i in panel.symbol_ids]


def test_a_scores_file_is_refused_in_one_line_naming_it_and_a_row(tiny_dataset, tmp_path):
    test = tiny_dataset.test
    days, symbols = _rows(test)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(test))
    good = _write(tmp_path / "good.pqt", days[::-1], symbols[::-1], scores[::-1])  # any order
    got = read_scores(good).on(test, "test rows")
    np.testing.assert_array_equal(got, scores)
    check({"orig": good}, tiny_dataset, "full_period")

    cases = {
        "missing": (days[1:], symbols[1:], scores[1:], "no score for 1 of the"),
        "duplicate": (np.r_[days, days[5:6]], [*symbols, symbols[5]], np.r_[scores, 0.0],
                      "1 duplicate (feature_date, symbol) row(s), e.g. row"),
        "nan": (days, symbols, np.where(np.arange(len(test)) == 3, np.nan, scores),
                f"1 score(s) missing or not finite, e.g. row 3 (feature_date={days[3]}, "
                f"symbol={symbols[3]!r}) = nan"),
    }  # fmt: skip
    for name, (d, s, v, want) in cases.items():
        path = _write(tmp_path / f"{name}.pqt", d, s, v)
        with pytest.raises(CompareError) as e:
            check({"orig": path}, tiny_dataset, "full_period")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"final.compare.orig: {path}: ") and want in msg
        assert "Fix:" in msg
    with pytest.raises(CompareError, match="no such file or run directory"):
        check({"orig": str(tmp_path / "nowhere.pqt")}, tiny_dataset, "full_period")


def test_the_missing_row_is_named(tiny_dataset, tmp_path):
    test = tiny_dataset.test
    days, symbols = _rows(test)
    path = _write(tmp_path / "s.pqt", np.r_[days[:7], days[8:]], [*symbols[:7], *symbols[8:]],
                  np.zeros(len(test) - 1))  # fmt: skip
    with pytest.raises(CompareError, match=rf"e.g. feature_date={days[7]}, symbol='{symbols[7]}'"):
        read_scores(path).on(test, "test rows")


def test_paired_differences_of_a_model_with_itself_are_zero(tiny_dataset):
    test = tiny_dataset.test
    bt_scores = test.returns + np.random.default_rng(1).normal(size=len(test))
    bt = backtest(test, bt_scores, 5)
    z = Series.from_daily(bt.daily, test)
    costs = CostModel()
    assert series_metrics(z, costs) == bt.metrics | backtest(test, bt_scores, 5, costs).costs
    diffs = paired_differences(z, z, costs)
    assert all(d.diff == 0 and d.se == 0 for d in diffs.values())


@pytest.fixture(scope="module")
def checkpoint_file(tiny_market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "m.pt"
    api.train(str(Path(__file__).parent.parent / "configs" / "smoke.yaml"), data=str(tiny_market),
              overrides=["train.epochs=1"], out=str(out))  # fmt: skip
    return out


def test_score_writes_every_row_and_refuses_to_overwrite(checkpoint_file, tiny_market, tmp_path):
    out = tmp_path / "scores.pqt"
    info = api.score(str(checkpoint_file), data=str(tiny_market), out=str(out))
    t = pq.read_table(out)
    n = pq.ParquetFile(tiny_market / "ml_dataset.pqt").metadata.num_rows
    assert t.column_names == ["feature_date", "symbol", "score", "liquid"] and len(t) == n
    assert info["rows"] == n and 0 < info["liquid_rows"] < n and info["rows_per_second"] > 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    with pytest.raises(SpecError, match=r"exists\. Fix: another path, or --force"):
        api.score(str(checkpoint_file), data=str(tiny_market), out=str(out), dates="2021-06-01:")
    assert cli.main(["score", str(checkpoint_file), "--data", str(tiny_market), "--out",
                     str(out)]) == 2  # fmt: skip
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    info = api.score(str(checkpoint_file), data=str(tiny_market), out=str(out), force=True,
                     dates="2021-06-01:2021-06-30")  # fmt: skip
    days = pq.read_table(out).column("feature_date").to_numpy().astype("datetime64[D]")
    assert info["rows"] == len(days) < n
    assert days.min() >= np.datetime64("2021-06-01") and days.max() <= np.datetime64("2021-06-30")


def test_score_refuses_data_of_another_embedding_width(checkpoint_file, tiny_market, tmp_path):
    other = tmp_path / "narrow"
    other.mkdir()
    shutil.copy(tiny_market / "prices.pqt", other / "prices.pqt")
    t = pq.read_table(tiny_market / "ml_dataset.pqt")
    last = max(int(c[4:]) for c in t.column_names if c.startswith("emb_"))
    pq.write_table(t.drop_columns([f"emb_{last}"]), other / "ml_dataset.pqt")
    with pytest.raises(DataError) as e:
        api.score(str(checkpoint_file), data=str(other), out=str(tmp_path / "s.pqt"))
    assert "\n" not in str(e.value) and f"({last} wide), but the model was trained on " in str(
        e.value
    )
    assert not (tmp_path / "s.pqt").exists()


# ---------------------------------------------------------------- two real runs


@pytest.fixture(scope="module")
def runs(tiny_market: Path, ray_local, tmp_path_factory: pytest.TempPathFactory):
    """Run b, its scores file; run a, compared with b's scores from the start."""
    root = tmp_path_factory.mktemp("compare")
    b = api.run(smoke_spec(tiny_market, **SMALL, **{"train.seed": "7"}), storage_path=str(root),
                name="b")  # fmt: skip
    b_scores = root / "b_scores.pqt"
    api.score(b.path, data=str(tiny_market), out=str(b_scores))
    a = api.run(smoke_spec(tiny_market, **SMALL, **{"final.compare.b": str(b_scores)}),
                storage_path=str(root), name="a")  # fmt: skip
    return a, b, b_scores


def test_score_of_a_runs_model_gives_the_scores_behind_its_test_series(runs, tiny_market, tmp_path):
    a, _, _ = runs
    out = tmp_path / "a.pqt"
    api.score(a.path, data=str(tiny_market), out=str(out))
    test = load_test_panel(RunDir(a.path).load())
    bt = backtest(test, read_scores(str(out)).on(test, "test rows"), a.spec.train.k)
    z, saved = Series.from_daily(bt.daily, test), RunDir(a.path).read_final_series("final", "test")
    assert saved is not None
    for f in dataclasses.fields(Series):
        np.testing.assert_array_equal(getattr(z, f.name), getattr(saved, f.name))
    assert bt.metrics == a.summary.final.test  # the same IC to the last digit


def test_a_second_runs_scores_give_its_own_test_metrics(runs):
    a, b, b_scores = runs
    c = a.summary.comparisons["b"]
    assert (c.kind, c.source) == ("scores", str(b_scores))
    assert c.test == b.summary.final.test and c.costs == b.summary.final.costs
    assert c.test_rows == a.summary.data.test_rows
    for m, d in c.vs_final.items():
        mine = {**a.summary.final.test, **a.summary.final.costs}[m]
        assert (d.a, d.b, d.diff) == (mine, c.test[m] if m in c.test else c.costs[m], d.a - d.b)
        assert d.se > 0
    assert "[compare b] scores file" in a.status() and "Final model minus b (scores)" in a.status()
    report = (Path(a.path) / "report.md").read_text()
    assert "| final − b |" in report and "| b (scores) |" in report
    assert "beside b" in a.figures()["test_cumulative_returns.png"].texts[0].get_text()
    assert list(a.comparisons().index) == ["final", "b"]
    assert a.vs_final().loc[("b", "mean_ic"), "other"] == b.summary.final.test["mean_ic"]
    assert len(a.series("compare_b")) == c.n_dates


def test_resume_adds_a_comparison_without_training(runs):
    a, b, _ = runs
    with pytest.raises(SpecError, match=r"only final\.compare may change"):
        api.resume(a.path, overrides=[f"final.compare.brun={b.path}", "final.epochs=3"])
    with Lines() as lines:
        view = api.resume(a.path, overrides=[f"final.compare.brun={b.path}"])
    assert not [ln for ln in lines if "training" in ln], lines
    s = view.summary
    assert list(s.comparisons) == ["b", "brun"] and s.comparisons["brun"].kind == "checkpoint"
    # The run directory's model scored here is the scores file `score` wrote from it.
    assert s.comparisons["brun"].test == s.comparisons["b"].test == b.summary.final.test
    assert s.comparisons["b"] == a.summary.comparisons["b"]  # kept as it was
    assert "brun" in view.spec.final.compare and "| brun (checkpoint) |" in (
        Path(a.path) / "report.md").read_text()  # fmt: skip
