"""Model, pairs, loss and training: structure, reproducibility, resume, the planted signal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ranker import train as train_module
from ranker.metrics import evaluate_bounds
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.pairs import sample_pairs
from ranker.panel import from_bf16_bits, to_bf16_bits
from ranker.train import TrainConfig, TrainState, fit, score

SMALL = ModelConfig(fund_hidden=16, price_hidden=8, news_hidden=16, fundamental_latent=8,
                    price_latent=4, news_latent=8)  # fmt: skip


def test_parameter_counts_match_the_notebook():
    assert sum(p.numel() for p in MultiBranchRanker(ModelConfig()).parameters()) == 109_393
    final = ModelConfig(fund_hidden=32, price_hidden=16, news_hidden=64)
    assert sum(p.numel() for p in MultiBranchRanker(final).parameters()) == 56_049


def test_seeded_model_output_is_pinned():
    torch.manual_seed(0)
    model = MultiBranchRanker(ModelConfig()).eval()
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(4, n, generator=g) for n in (9, 19, 768)]
    out = model(*x).detach().numpy()
    np.testing.assert_allclose(out, PINNED_OUTPUT, rtol=0, atol=1e-6)


# Measured once with torch 2.13 (CPU); a change here means the model's structure or init changed.
PINNED_OUTPUT = np.array([0.11603294, 0.11697461, 0.15741816, 0.12105279])


def test_pairs_are_within_date_disjoint_and_labelled():
    rng = np.random.default_rng(0)
    sizes = np.array([1, 2, 5, 10, 7, 0, 3])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    returns = rng.normal(0, 0.5, bounds[-1])
    returns[3] = 5.0  # clipped to 1.0 for labels
    returns[4] = 1.5  # also clipped: ties with row 3 -> label 0 either way
    i, j, y = sample_pairs(bounds, returns, np.random.default_rng(1))
    date = np.repeat(np.arange(len(sizes)), sizes)
    assert len(i) == (sizes // 2).sum()
    assert np.all(date[i] == date[j])
    used = np.concatenate([i, j])
    assert len(np.unique(used)) == len(used), "a row is used at most once per epoch"
    clipped = np.clip(returns, -1, 1)
    np.testing.assert_array_equal(y, (clipped[i] > clipped[j]).astype(np.float32))
    # Seeded: the same generator state gives the same pairs; another gives others.
    i2, j2, _ = sample_pairs(bounds, returns, np.random.default_rng(1))
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(j, j2)


def test_pair_order_is_swapped_half_the_time():
    bounds = np.array([0, 20000])
    returns = np.arange(20000, dtype=float) / 40000  # distinct, inside the clip
    _i, _j, y = sample_pairs(bounds, returns, np.random.default_rng(2))
    assert 0.48 < y.mean() < 0.52


def test_loss_equals_the_notebooks_bce_on_probabilities():
    torch.manual_seed(0)
    diff = torch.randn(1000) * 3
    label = (torch.rand(1000) > 0.5).float()
    s = 0.1
    target = label * (1 - s) + 0.5 * s
    ours = F.binary_cross_entropy_with_logits(diff, target)
    theirs = F.binary_cross_entropy(torch.sigmoid(diff), target)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_fit_is_reproducible(tiny_dataset):
    tc = TrainConfig(epochs=2, eval_every=1, batch_size=256)
    a = fit(SMALL, tc, tiny_dataset.train, tiny_dataset.val)
    b = fit(SMALL, tc, tiny_dataset.train, tiny_dataset.val)
    assert a.metrics == b.metrics
    for (ka, va), (_, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka


def test_bf16_where_it_does_not_pay_trains_on_bf16_values_in_fp32(tiny_dataset, monkeypatch):
    """Where bf16 matmuls do not pay (forced here, whatever this CPU does), precision=bf16 is
    fp32 training on the embeddings rounded to bf16, exactly, whether the Panel holds fp32
    (rounded each step) or bf16 bits."""
    monkeypatch.setattr(train_module, "bf16_matmul_pays", lambda device: False)
    tc = TrainConfig(epochs=2, eval_every=1, batch_size=256)
    train, val = tiny_dataset.train, tiny_dataset.val
    rounded = replace(train, emb=from_bf16_bits(to_bf16_bits(train.emb)))
    assert not np.array_equal(rounded.emb, train.emb)  # the rounding changes the inputs
    runs = [
        fit(SMALL, tc, rounded, val),
        fit(SMALL, replace(tc, precision="bf16"), train, val),
        fit(SMALL, replace(tc, precision="bf16"), replace(train, emb=to_bf16_bits(train.emb)), val),
    ]
    unrounded = fit(SMALL, tc, train, val)
    assert unrounded.metrics != runs[0].metrics
    for r in runs[1:]:
        assert r.metrics == runs[0].metrics
        for k, v in runs[0].model.state_dict().items():
            assert torch.equal(v, r.model.state_dict()[k]), k


def test_resume_continues_exactly(tiny_dataset):
    tc = TrainConfig(epochs=4, eval_every=2, batch_size=256)
    states = {}
    full = fit(SMALL, tc, tiny_dataset.train, tiny_dataset.val,
               on_eval=lambda ev: states.setdefault(ev.epoch, ev.state()))  # fmt: skip
    assert sorted(states) == [2, 4]
    # Round-trip the state through torch.save/load(weights_only=True), as a checkpoint does.
    import io

    buf = io.BytesIO()
    torch.save(states[2].to_dict(), buf)
    buf.seek(0)
    state = TrainState.from_dict(torch.load(buf, weights_only=True))
    assert state.progress.epoch == 2 and state.progress.restored == 0
    resumed = fit(SMALL, tc, tiny_dataset.train, tiny_dataset.val, resume=state)
    assert resumed.metrics == full.metrics
    assert [h["epoch"] for h in resumed.history] == [2, 4]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_resume_refuses_another_config(tiny_dataset):
    tc = TrainConfig(epochs=2, eval_every=1, batch_size=256)
    states = []
    fit(
        SMALL,
        tc,
        tiny_dataset.train,
        tiny_dataset.val,
        on_eval=lambda ev: states.append(ev.state()),
    )
    with pytest.raises(ValueError, match="different configuration"):
        fit(SMALL, TrainConfig(epochs=2, eval_every=1, learning_rate=0.01), tiny_dataset.train,
            tiny_dataset.val, resume=states[0])  # fmt: skip


def test_best_evaluation_is_restored(tiny_dataset):
    tc = TrainConfig(epochs=3, eval_every=1, batch_size=256, learning_rate=5e-3)
    r = fit(SMALL, tc, tiny_dataset.train, tiny_dataset.val)
    best = max(r.history, key=lambda h: h["ic_sharpe"])
    assert r.best_epoch == best["epoch"]
    again = evaluate_bounds(
        tiny_dataset.val.bounds, score(r.model, tiny_dataset.val), tiny_dataset.val.returns
    )
    assert again["ic_sharpe"] == pytest.approx(best["ic_sharpe"], abs=1e-9)
    assert r.metrics["ic_sharpe"] == pytest.approx(best["ic_sharpe"], abs=1e-9)


def test_planted_signal_is_found(tiny_dataset):
    """The notebook's default model learns the planted signal: test IC > half the oracle's."""
    torch.set_num_threads(1)
    r = fit(ModelConfig(), TrainConfig(epochs=10), tiny_dataset.train, tiny_dataset.val)
    test = tiny_dataset.test
    model_ic = evaluate_bounds(test.bounds, score(r.model, test), test.returns)["mean_ic"]
    oracle_ic = evaluate_bounds(test.bounds, test.oracle, test.returns)["mean_ic"]
    assert oracle_ic > 0.05
    assert model_ic > 0.5 * oracle_ic, (model_ic, oracle_ic)


def test_bad_train_config():
    with pytest.raises(ValueError, match=r"learning_rate=-1: must be a number > 0.*metric='x'"):
        TrainConfig(learning_rate=-1, metric="x")
    with pytest.raises(ValueError, match=r"model.news_dropout=1.5: a dropout must be in \[0, 1\)"):
        ModelConfig(news_dropout=1.5)
