"""Every input is checked before work starts, and nothing a user owns is overwritten.

Each class of bad input (a spec value, a flag, a prices file, an output folder that holds data,
a run's spec changed on resume) is tried through the real `liquid-search` process: it must end
in one line naming the problem, exit 2, and leave every file in its folders as it was (checked
by content hash) with nothing new written. The cases that need Ray, a run or an S3 server are in
test_resume.py, test_search.py and test_cloud.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ranker import schema
from ranker.data import DataError, load
from search.rundir import RunDir
from tests.conftest import SMOKE


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots`, by path, with the sha256 of its content."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(cases: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Each case's `liquid-search` command line: the first as a real process, the others through
    the same `main` in this process (a process per case would cost a torch import each)."""
    first, *rest = cases
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = {first: subprocess.run([sys.executable, "-m", "search.cli", *cases[first]], cwd=cwd,
                                 env=env, capture_output=True, text=True, timeout=180)}  # fmt: skip
    for k in rest:
        out[k] = in_process(cases[k], cwd)
    return out


def in_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`liquid-search argv` through `search.cli.main` here: its exit code, stdout and stderr;
    the signal handlers and working directory it changes are put back."""
    from search import cli

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    here = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse's own exits
                code = e.code
    finally:
        os.chdir(here)
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_one_line(results: dict[str, subprocess.CompletedProcess], want: dict[str, str]):
    for k, r in results.items():
        assert r.returncode == 2, (k, r.stderr[-2000:])
        err = r.stderr
        assert err.startswith("error: ") and "Traceback" not in err, (k, err[-2000:])
        assert err.count("\n") == 1, (k, err)
        assert want[k] in err, (k, want[k], err)
        assert r.stdout == "", (k, r.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A folder with a user's files in it, to prove nothing is written or overwritten."""
    (tmp_path / "mine.txt").write_text("a user's file")
    (tmp_path / "runs").mkdir()
    return tmp_path


def test_bad_spec_values_and_flags_end_in_one_line_and_write_nothing(home, tiny_market):
    """Values the spec check used to pass (they failed after the stages, or waited forever),
    and every flag of `run`."""
    data = f"data.source={tiny_market}"
    run = ["run", "--config", str(SMOKE), "--storage", str(home / "runs"), data]
    (home / "a-file").write_text("not a directory")
    cases = {
        "final.epochs=0": ([*run, "final.epochs=0"], "final.epochs=0: must be a positive integer"),
        "final.epochs=-3": ([*run, "final.epochs=-3"], "final.epochs=-3: must be a positive"),
        "gpu=-1": ([*run, "resources.gpu=-1"], "resources.gpu=-1.0: must be 0 (no GPU)"),
        "gpu=-2.0": ([*run, "resources.gpu=-2.0"], "resources.gpu=-2.0: must be 0 (no GPU)"),
        "gpu=inf": ([*run, "resources.gpu=.inf"], "resources.gpu=inf: must be 0"),
        "cpu=0": ([*run, "resources.cpu=0"], "resources.cpu=0.0: must be a number > 0"),
        "k=1000": ([*run, "train.k=1000"], "train.k=1000: must be at most 10"),
        "seed=-1": ([*run, "train.seed=-1"], "train.seed=-1: must be a non-negative integer"),
        "lr=inf": ([*run, "train.learning_rate=.inf"], "train.learning_rate=inf: must be a"),
        "alpha=-1": ([*run, "model.news_alpha=-1"], "model.news_alpha=-1.0: must be a finite"),
        "threshold=nan": ([*run, "universe.threshold=.nan"], "universe.threshold=nan: must be"),
        "scale=0": ([*run, "data.synth.scale=0"], "data.synth.scale=0.0: must be a positive"),
        "n_dates=1": ([*run, "data.synth.n_dates=1"], "data.synth.n_dates=1: must be an integer"),
        "spread=-1": ([*run, "costs.spread=-1"], "costs.spread=-1.0: must be a finite fraction"),
        "failures=-1": ([*run, "max_failures=-1"], "max_failures=-1: expected a non-negative"),
        "--name ../x": ([*run, "--name", "../x"], "name='../x': a run name becomes a directory"),
        "--name ''": ([*run, "--name", ""], "name='': expected a non-empty string (set by --name"),
        "--storage ''": ([*run, "--storage", ""], "storage='': expected a non-empty string"),
        "--storage FILE": ([*run, "--storage", str(home / "a-file")], "is a file, not a storage"),
        "--data ''": ([*run, "--data", ""], "--data='': empty (an unset shell variable?)"),
        "--config DIR": (["run", "--config", str(home), data], "is a directory, not a spec file"),
        "--config ''": (["run", "--config", "", data], "empty path"),
        "--threads 0": (["train", "--threads", "0", "--data", str(tiny_market)],
                        "--threads=0: must be a positive integer"),
        "--threads -2": (["train", "--threads", "-2", "--data", str(tiny_market)],
                         "--threads=-2: must be a positive integer"),
        "--threads x": (["train", "--threads", "x"], "invalid int value: 'x'"),
        "--interval 0": (["status", str(home), "--interval", "0"], "--interval=0.0: must be"),
        "no command": (["rn"], "invalid choice: 'rn'"),
    }  # fmt: skip
    before = snapshot(home)
    results = run_cli({k: a for k, (a, _) in cases.items()}, cwd=home)
    assert_one_line(results, {k: w for k, (_, w) in cases.items()})
    assert snapshot(home) == before


def test_every_problem_is_listed_at_once(home, tiny_market):
    r = run_cli({"all": ["run", "--config", str(SMOKE), "--storage", str(home / "runs"),
                         "--data", "", "--name", "a/b", "final.epochs=0", "resources.gpu=-1",
                         "train.k=11"]}, cwd=home)["all"]  # fmt: skip
    assert r.returncode == 2, r.stderr
    for want in ("--data=''", "name='a/b'", "final.epochs=0", "resources.gpu=-1.0", "train.k=11"):
        assert want in r.stderr, (want, r.stderr)
    assert "5 problems" in r.stderr and "Traceback" not in r.stderr


def test_synth_refuses_to_overwrite_data_and_bad_parameters(home, tiny_market):
    market = home / "market"
    shutil.copytree(tiny_market, market)
    cases = {
        "existing": (["synth", str(market), "--n-symbols", "40", "--n-dates", "60"],
                     "already holds ml_dataset.pqt, prices.pqt"),
        "file": (["synth", str(home / "mine.txt")], "is a file, not a folder"),
        "scale=0": (["synth", str(home / "new"), "--scale", "0"], "scale=0.0: must be a positive"),
        "scale=-1": (["synth", str(home / "new"), "--scale", "-1"], "scale=-1.0: must be"),
        "tiny scale": (["synth", str(home / "new"), "--scale", "0.001"], "gives 6 symbols"),
        "n-dates=1": (["synth", str(home / "new"), "--n-dates", "1"], "n_dates=1: must be"),
        "n-symbols=3": (["synth", str(home / "new"), "--n-symbols", "3"], "n_symbols=3: must"),
        "seed=-1": (["synth", str(home / "new"), "--seed", "-1"], "seed=-1: must be"),
        "signal=nan": (["synth", str(home / "new"), "--signal", "nan"], "signal=nan: must be"),
    }  # fmt: skip
    before = snapshot(home)
    results = run_cli({k: a for k, (a, _) in cases.items()}, cwd=home)
    assert_one_line(results, {k: w for k, (_, w) in cases.items()})
    assert snapshot(home) == before
    # --force replaces a market, as asked.
    r = run_cli({"force": ["synth", str(market), "--n-symbols", "40", "--n-dates", "60",
                           "--force"]}, cwd=home)["force"]  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert snapshot(market) != {k: v for k, v in before.items() if k.startswith(str(market))}


def test_train_refuses_to_overwrite_a_checkpoint(home, tiny_market):
    (home / "model.pt").write_bytes(b"a user's model")
    args = ["train", "--data", str(tiny_market), "train.epochs=1"]
    cases = {
        "exists": ([*args, "--out", str(home / "model.pt")], "exists. Fix: another path, or"),
        "dir": ([*args, "--out", str(home / "runs")], "is a directory. Fix: a file path"),
    }  # fmt: skip
    before = snapshot(home)
    results = run_cli({k: a for k, (a, _) in cases.items()}, cwd=home)
    assert_one_line(results, {k: w for k, (_, w) in cases.items()})
    assert snapshot(home) == before


def test_resume_takes_overrides_only_where_safe(home, tiny_market):
    """A run's spec may change on resume only where the finished stages stay valid; anything
    else is refused before anything starts, and the run is left as it was."""
    from search import spec as specmod

    rd = RunDir(str(home / "runs" / "r"))
    rd.write_spec(specmod.load(SMOKE, [f"data.source={tiny_market}"]))
    cases = {
        "train.epochs": (["resume", rd.path, "train.epochs=9"],
                         "override 'train.epochs=9': only ['final', 'costs', 'resources', "
                         "'max_concurrent', 'max_failures'] may change"),
        "stages": (["resume", rd.path, "stages.dropout.replicates=2"], "may change when a run resumes"),
        "final.epochs=0": (["resume", rd.path, "final.epochs=0"], "final.epochs=0: must be"),
        "--data ''": (["resume", rd.path, "--data", ""], "--data='': empty"),
    }  # fmt: skip
    before = snapshot(home)
    results = run_cli({k: a for k, (a, _) in cases.items()}, cwd=home)
    assert_one_line(results, {k: w for k, (_, w) in cases.items()})
    assert snapshot(home) == before


# --- prices.pqt as strictly as the dataset ---------------------------------------------------


EARLY = datetime.date(2021, 6, 1)  # the tiny market's feature dates run into 2022


def _with_prices(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    t = pq.read_table(dst / schema.PRICES_FILE)
    pq.write_table(edit(t), dst / schema.PRICES_FILE)
    return dst


def _set(t: pa.Table, name: str, i: int, value: float) -> pa.Table:
    v = t.column(name).to_numpy().copy()
    v[i] = value
    return t.set_column(t.schema.get_field_index(name), name, pa.array(v))


@pytest.mark.parametrize(
    ("case", "edit", "message"),
    [
        ("zero close", lambda t: _set(t, "close", 5, 0.0), r"column 'close' has 1 value\(s\) that "
         r"are missing, non-finite or not positive, e.g. row 5 \(symbol="),
        ("negative close", lambda t: _set(t, "close", 7, -3.0), r"'close' has 1 value.*not positive"),
        ("nan volume", lambda t: _set(t, "volume", 2, np.nan), r"'volume' has 1 value.*zero or more"),
        ("duplicate", lambda t: pa.concat_tables([t, t.slice(10, 3)]),
         r"prices.pqt: 3 duplicate \(symbol, date\) row\(s\), e.g. row \d+ \(symbol="),
        ("ends early", lambda t: t.filter(pc.less(t.column("date"), pa.scalar(EARLY, pa.date32()))),
         r"prices run from .* but the dataset's feature dates from .*: the liquidity of the dates "
         r"outside is unknown"),
        ("empty", lambda t: t.slice(0, 0), r"prices.pqt: the file has no rows"),
    ],
)  # fmt: skip
def test_prices_that_cannot_describe_liquidity_are_refused(tiny_market, tmp_path, case, edit,
                                                           message):  # fmt: skip
    with pytest.raises(DataError, match=message):
        load(_with_prices(tiny_market, tmp_path / "m", edit))


def test_rows_outside_a_symbols_price_history_are_counted(tiny_market, tmp_path):
    """A documented rule with a line: rows dated outside their symbol's prices are judged by the
    prices the symbol has, and the load says how many."""
    t = pq.read_table(tiny_market / schema.PRICES_FILE)
    sym = t.column("symbol").to_numpy(zero_copy_only=False)
    dates = t.column("date").to_numpy()
    victim = sym[0]
    last = dates[sym == victim].max()
    keep = ~((sym == victim) & (dates > last - np.timedelta64(40, "D")))
    src = _with_prices(tiny_market, tmp_path / "m", lambda t: t.filter(pa.array(keep)))
    lines: list[str] = []
    ds = load(src, log=lines.append)
    n = ds.info.rows_outside_price_history
    assert n > 0 and f"{n:,} rows fall outside their symbol's price history" in lines[0], lines
