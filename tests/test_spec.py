"""The search spec: every bundled file loads, strict errors listed at once, overrides, mapping."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from search import spec as specmod

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    sp = specmod.load(path)
    assert sp.stages and all(len(s.points) >= 2 for s in sp.stages)
    # Round trip through the resolved form written next to every run.
    assert specmod.from_dict(sp.to_dict()) == sp


def test_default_spec_is_the_notebooks_search():
    sp = specmod.load(CONFIGS[[p.name for p in CONFIGS].index("search.yaml")])
    assert [s.name for s in sp.stages] == ["architecture", "training", "dropout"]
    assert [len(s.points) for s in sp.stages] == [27, 27, 27]
    assert sp.stage("architecture").grid == {
        "latent_scale": (0.5, 1.0, 2.0), "hidden_scale": (0.5, 1.0, 1.5), "news_alpha": (0.6, 0.8, 1.0)}  # fmt: skip
    assert sp.stage("training").grid["learning_rate"] == (5e-4, 1e-3, 2e-3)
    assert sp.stage("dropout").grid["fund_dropout"] == (0.3, 0.5, 0.7)
    assert sp.train.epochs == 15 and sp.train.eval_every == 5 and sp.train.metric == "ic_sharpe"
    assert sp.final.epochs == 25 and sp.resources.cpu == 1 and sp.resources.gpu == 0


def test_scales_and_sets_map_onto_the_config():
    sp = specmod.load(CONFIGS[[p.name for p in CONFIGS].index("search.yaml")])
    m, t = specmod.resolve_point(sp, sp.model, sp.train,
                                 {"latent_scale": 0.5, "hidden_scale": 1.5, "news_alpha": 0.6})  # fmt: skip
    assert (m.fund_hidden, m.price_hidden, m.news_hidden) == (96, 48, 192)
    assert (m.fundamental_latent, m.price_latent, m.news_latent) == (16, 8, 16)
    assert m.news_alpha == 0.6 and t == sp.train
    m, t = specmod.resolve_point(
        sp, sp.model, sp.train, {"learning_rate": 2e-3, "fund_dropout": 0.7}
    )
    assert t.learning_rate == 2e-3 and m.fundamental_dropout == 0.7


def test_overrides():
    sp = specmod.load(CONFIGS[0], ["train.epochs=3", "resources.gpu=0.25",
                                   "stages.dropout.grid.news_dropout=[0.1, 0.2]",
                                   "stages.dropout.replicates=3"])  # fmt: skip
    assert sp.train.epochs == 3 and sp.resources.gpu == 0.25
    dropout = sp.stage("dropout")
    assert dropout.grid["news_dropout"] == (0.1, 0.2) and dropout.replicates == 3
    assert dropout.n_trials == 3 * 3 * 2 * 3


def test_a_renamed_stage_key_is_read_with_a_one_line_note(caplog):
    with caplog.at_level(logging.WARNING, logger="liquid_search"):
        sp = specmod.load(CONFIGS[0], ["stages.dropout.seeds=2", "stages.dropout.select=median"])
    assert (sp.stage("dropout").replicates, sp.stage("dropout").combine) == (2, "median")
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and "stages.dropout.seeds is now stages.dropout.replicates" in notes[0]
    with pytest.raises(specmod.SpecError, match="both 'seeds' and 'replicates'"):
        specmod.load(CONFIGS[0], ["stages.dropout.seeds=2", "stages.dropout.replicates=2"])
    # A run's saved spec says nothing: its stages have run.
    raw = sp.to_dict()
    assert "replicates" in raw["stages"][0] and "seeds" not in raw["stages"][0]


def test_bad_override_is_attributed_to_the_command_line():
    with pytest.raises(specmod.SpecError) as e:
        specmod.load(CONFIGS[0], ["train.precision=fp16", "train.epochs=3"])
    assert e.value.errors == [
        "train.precision='fp16': must be one of ['fp32', 'bf16', 'auto'] (set on the command line)"
    ]
    assert str(e.value).startswith(f"{CONFIGS[0]}: train.precision='fp16'")


BAD = """
data: {source: null, colour: red}
model: {fund_hidden: -3, n_embedding_dim: 12}
train: {epochz: 2, learning_rate: fast}
universe: {mode: weekly}
params:
  news_alpha: {set: model.news_alfa}
stages:
  - name: architecture
    grid: {news_alpha: [0.6], latent_scale: [1.0]}
    replicates: 0
resources: {cpu: 0}
extra: 1
"""


def test_bad_spec_lists_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(specmod.SpecError) as e:
        specmod.load(path)
    msg = str(e.value)
    for needle in ("data.colour: unknown key", "model.fund_hidden=-3: must be a positive integer",
                   "model.n_embedding_dim: set from the data", "train.epochz: unknown key",
                   "train.learning_rate='fast': expected float", "universe.mode='weekly'",
                   "params.news_alpha.set='model.news_alfa': not a config field",
                   "stages.architecture.grid.news_alpha: no such search key",
                   "stages.architecture.grid.latent_scale: no such search key",
                   "stages.architecture.replicates=0", "resources.cpu=0.0", "extra: unknown section"):  # fmt: skip
        assert needle in msg, needle
    assert len(e.value.errors) >= 12


def test_bad_spec_fails_before_ray_starts(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    r = subprocess.run([sys.executable, "-m", "search.cli", "run", "--config", str(path),
                        "--storage", str(tmp_path / "runs")], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert "problems in the search spec" in r.stderr and "Traceback" not in r.stderr
    assert "dashboard" not in r.stderr and "local Ray" not in r.stderr  # Ray never started
    assert not (tmp_path / "runs").exists()


def test_node_local_storage_is_refused_with_remote_nodes():
    from search.connect import mount_type, storage_problem

    one = {"10.0.0.1"}
    two = {"10.0.0.1", "10.0.0.2"}
    assert storage_problem("/runs", "10.0.0.1", one, "ext4") is None  # one machine: fine
    assert storage_problem("s3://b/runs", "10.0.0.1", two, "") is None
    assert storage_problem("/mnt/shared/runs", "10.0.0.1", two, "nfs4") is None
    assert storage_problem("/mnt/s", "10.0.0.1", two, "fuse.s3fs") is None
    msg = storage_problem("/runs", "10.0.0.1", two, "ext4")
    assert msg and "node-local path (ext4 filesystem)" in msg and "10.0.0.2" in msg
    assert "s3://bucket/path" in msg
    assert mount_type("/") != ""  # /proc/mounts is read


def test_every_grid_value_is_checked_before_ray(tmp_path):
    with pytest.raises(specmod.SpecError) as e:
        specmod.load(CONFIGS[0], ["stages.dropout.grid.news_dropout=[0.1, 1.5, -0.2]",
                                  "stages.training.grid.learning_rate=[0.001, 0]",
                                  "train.epochs=0"])  # fmt: skip
    errors = e.value.errors
    assert "train.epochs=0: must be a positive integer (set on the command line)" in errors
    assert any(x.startswith("stages.dropout.grid.news_dropout=1.5: model.news_dropout=1.5")
               for x in errors)  # fmt: skip
    assert any(x.startswith("stages.dropout.grid.news_dropout=-0.2:") for x in errors)
    assert any(x.startswith("stages.training.grid.learning_rate=0:") for x in errors)
    assert len(errors) == 4, errors


def test_field_types_come_from_the_annotations():
    """Types are checked for every annotated type, including ones a string compare misses."""
    from ranker.config import ConfigError, strict_from_dict
    from ranker.model import ModelConfig
    from search.spec import DataSpec

    with pytest.raises(ConfigError, match=r"model.news_hidden=16.5: expected int"):
        strict_from_dict(ModelConfig, {"news_hidden": 16.5}, "model")
    with pytest.raises(ConfigError, match=r"data.synth.n_dates='x': expected int \| null"):
        strict_from_dict(DataSpec, {"synth": {"n_dates": "x"}}, "data")
    cfg = strict_from_dict(
        DataSpec, {"source": None, "synth": {"scale": 1, "n_dates": 100}}, "data"
    )
    assert (
        cfg.synth.scale == 1.0 and isinstance(cfg.synth.scale, float) and cfg.synth.n_dates == 100
    )
    # YAML 1.1 reads 1e-3 (no dot) as a string; a float field takes it as the number.
    sp = specmod.load(CONFIGS[0], ["train.learning_rate=1e-3"])
    assert sp.train.learning_rate == 0.001


def test_a_grid_key_cannot_take_the_name_of_a_trials_own_column():
    with pytest.raises(specmod.SpecError, match=r"params\.seed: the name is one of a trial.s own"):
        specmod.load(CONFIGS[0], ["params.seed={set: train.seed}"])
