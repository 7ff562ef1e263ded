"""Shared fixtures: a tiny seeded synthetic market on disk, one local Ray, one smoke run; and
the test tiers: every test that starts Ray (in this process or through a `liquid-search`
subprocess), a cluster, a server or a browser is marked `ray` here, by the fixtures it uses, so
`pytest -m "not ray"` runs the rest in a couple of minutes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_util import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
FAULTS = ROOT / "tests" / "faults.py"  # `liquid-search` with a fault injected into one trial

# The fixtures that start Ray, a cluster, a server or a browser (and, through them, every fixture
# built on one: smoke_run, grid_run, ...). A test that needs one of these and no fixture of its
# own asks for `spawns_ray`.
HEAVY_FIXTURES = frozenset({"ray_local", "make_cluster", "spawns_ray"})


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))  # with every fixture they depend on
        heavy = HEAVY_FIXTURES & fixtures
        if heavy or any(item.iter_markers(name="cluster")) or any(item.iter_markers(name="cloud")):
            item.add_marker(pytest.mark.ray)
            # Under `pytest -n 2` (pytest-xdist; `--dist loadgroup` is in pyproject's addopts) a
            # group runs on one worker: the tests on this process's Ray share it and the smoke
            # run built on it, and each other heavy module keeps its module-scoped fixtures (a
            # moto server, a clean run) built once. The fast tests spread one by one.
            group = "ray_local" if "ray_local" in fixtures else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test outside the `ray` tier that starts Ray anyway (a `liquid-search run` subprocess,
    say) fails at once instead of quietly slowing the fast tier: Ray is pointed at a closed
    port."""
    if request.node.get_closest_marker("ray") is None:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # unmarked: give it `spawns_ray`


@pytest.fixture(scope="session")
def spawns_ray() -> None:
    """Marks a test (or fixture) that starts Ray, a server or a browser of its own, e.g. by
    running `liquid-search run` in a subprocess: it belongs to the `ray` tier."""


# A market small enough to build in a second, large enough for >= 10 names per val/test date.
TINY = {"n_symbols": 400, "n_dates": 250, "signal": 4.0, "seed": 0}


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ranker.synth import generate

    out = tmp_path_factory.mktemp("market")
    generate(out, **TINY)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tiny_market: Path):
    from ranker.data import load

    return load(tiny_market, full_universe=True)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray per test session (2 CPUs, no dashboard)."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        # address="local": always a private Ray, even if a `ray start` cluster runs here.
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=300 * 2**20)  # fmt: skip
    # Ray points session_latest at this session as it starts; a later process that starts a Ray
    # of its own moves the link, so it is read now.
    tmp = os.environ.get("RAY_TMPDIR", "/tmp")
    _SESSION.append(Path(os.path.realpath(os.path.join(tmp, "ray", "session_latest"))))
    yield ray
    ray.shutdown()


_SESSION: list[Path] = []


@pytest.fixture(scope="session")
def ray_session_dir(ray_local) -> Path:
    """The session directory of `ray_local` (its logs are under logs/)."""
    return _SESSION[-1]


# One trial at a time unless a test says otherwise: a stage of tiny trials then starts one trial
# process (about 4 CPU-seconds of imports) instead of one per CPU, and trains the same numbers.
TEST_OVERRIDES = {"max_concurrent": "1"}


def smoke_spec(tiny_market: Path, **overrides: str):
    from search import spec as specmod

    items = [f"{k}={v}" for k, v in {**TEST_OVERRIDES, **overrides}.items()]
    sp = specmod.load(SMOKE, [f"data.source={tiny_market}", *items])
    return sp


class Lines(logging.Handler):
    """Collects the search's log lines (logger `liquid_search`) while installed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        logger = logging.getLogger("liquid_search")
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("liquid_search").removeHandler(self)


def run_search(sp, run_dir: Path | str, **kwargs):
    """driver.run as the CLI calls it: load the spec's data, then run in `run_dir`."""
    from search import driver
    from search.rundir import RunDir
    from search.source import data_source, load_data, load_folds_data

    source = data_source(sp, kwargs.pop("source", None))
    data = load_folds_data(sp, source) if sp.walk_forward.on else load_data(sp, source)
    return driver.run(sp, RunDir(str(run_dir)), data, source, **kwargs)


@pytest.fixture(scope="session")
def smoke_run(tiny_market: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete smoke search (3 stages x 2 points, final, baseline) in a run directory."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    with Lines() as lines:
        run_search(smoke_spec(tiny_market), run_dir)
    (run_dir / "driver.log").write_text("\n".join(lines))
    return run_dir


GRID = {"stages.architecture.grid": "{latent_scale: [0.5, 1.0], news_alpha: [0.6, 1.0]}",
        "stages.architecture.replicates": "2"}  # fmt: skip


@pytest.fixture(scope="session")
def grid_run(tiny_market: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 'architecture' alone on a 2 x 2 grid with 2 replicates (8 trials, and 2 more of its
    start, news_alpha 0.8, no grid point: the SPA test's benchmark), no final model."""
    run_dir = tmp_path_factory.mktemp("runs") / "grid"
    run_search(smoke_spec(tiny_market, **GRID), run_dir, stop_after="architecture")
    return run_dir


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters with LocalCluster's arguments; every one is stopped, pass or fail."""
    started: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(**kwargs)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
