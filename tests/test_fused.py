"""The CPU training path (`_fused_loss_and_grads`) against plain autograd through the nn modules.

Both paths draw the dropout masks from the model's generator in the same order, so after the
same `seed_dropout` they drop the same units and must agree to float rounding: the loss, every
parameter gradient, and the weights after a few AdamW steps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ranker import model as model_module
from ranker.model import HEAD_DROPOUT, ModelConfig, MultiBranchRanker, keep_mask

CONFIGS = {
    "default": ModelConfig(),
    # The head's Dropout(0.1) stays.
    "no-encoder-dropout": ModelConfig(fundamental_dropout=0, price_dropout=0, news_dropout=0),
    "small-alpha-1": ModelConfig(
        n_embedding_dim=48,
        fund_hidden=16,
        price_hidden=8,
        news_hidden=24,
        fundamental_latent=8,
        price_latent=4,
        news_latent=6,
        news_alpha=1.0,
    ),
    "heavy-dropout": ModelConfig(
        fundamental_dropout=0.9, price_dropout=0.5, news_dropout=0.7, news_alpha=2.5
    ),
}
# s_i - s_j cancels the output bias: its gradient is rounding noise around 0 in both paths.
CANCELLED = "output_head.3.bias"


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the fused path, so a test knows which path ran."""
    calls: list[int] = []
    inner = model_module._fused_loss_and_grads

    def spy(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(model_module, "_fused_loss_and_grads", spy)
    return calls


def batch(cfg: ModelConfig, pairs: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(price, fund, emb) for 2 * pairs rows (the i's, then the j's), and smoothed targets."""
    g = torch.Generator().manual_seed(seed)
    dims = (cfg.n_price_features, cfg.n_fundamental_features, cfg.n_embedding_dim)
    x = [torch.randn(2 * pairs, n, generator=g) for n in dims]
    label = (torch.rand(pairs, generator=g) > 0.5).float()
    return x, label * 0.9 + 0.05


def plain_backward(model: MultiBranchRanker, x: list[torch.Tensor], y: torch.Tensor):
    """Autograd through the nn modules, as training did before the fused path."""
    loss = model.pair_loss(*x, y)
    loss.backward()
    return loss.detach()


def grads(model: MultiBranchRanker) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_gradients_match_autograd(name, fused_calls):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=300, seed=1)

    model.seed_dropout(7)
    fused = model.pair_loss_backward(*x, y)
    assert fused_calls == [1]
    got = grads(model)
    model.zero_grad(set_to_none=True)
    model.seed_dropout(7)
    want = plain_backward(model, x, y)
    expected = grads(model)

    assert fused.grad_fn is None and fused.shape == ()
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=0)
    assert got.keys() == expected.keys()
    for k, g in expected.items():
        if k == CANCELLED:
            assert got[k].abs().item() < 1e-6 and g.abs().item() < 1e-6, (got[k], g)
            continue
        scale = g.abs().max().item()
        assert scale > 0, f"{k}: zero gradient, the comparison would be empty"
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-5 * scale, msg=k)


def test_gradients_accumulate_like_backward(fused_calls):
    cfg = ModelConfig()
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=64, seed=1)
    model.seed_dropout(1)
    model.pair_loss_backward(*x, y)
    once = grads(model)
    model.seed_dropout(1)
    model.pair_loss_backward(*x, y)
    assert len(fused_calls) == 2
    for k, g in grads(model).items():
        torch.testing.assert_close(g, 2 * once[k], rtol=0, atol=0, msg=k)


def test_other_seeds_drop_other_units(fused_calls):
    """The loss depends on the dropout seed, so the comparisons here are not vacuous."""
    cfg = ModelConfig()
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=64, seed=1)
    losses = []
    for seed in (1, 2):
        model.seed_dropout(seed)
        losses.append(model.pair_loss_backward(*x, y).item())
    assert losses[0] != losses[1]


@pytest.fixture
def two_threads():
    """The cancelled bias's rounding-noise gradient depends on the summation order, which
    depends on the thread count earlier tests may have set: fix it for a stable bound."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_adamw_steps_give_the_same_weights(fused_calls, two_threads):
    cfg = ModelConfig()
    torch.manual_seed(0)
    a = MultiBranchRanker(cfg).train()
    b = copy.deepcopy(a)
    init = copy.deepcopy(a.state_dict())
    opts = [
        torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-3, fused=True) for m in (a, b)
    ]
    for step in range(4):
        x, y = batch(cfg, pairs=256, seed=10 + step)
        for model, opt in zip((a, b), opts, strict=True):
            model.seed_dropout([3, step])
            opt.zero_grad(set_to_none=True)
            if model is a:
                model.pair_loss_backward(*x, y)
            else:
                plain_backward(model, x, y)
            opt.step()
    assert len(fused_calls) == 4
    for (k, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if k == CANCELLED:
            # Adam scales its rounding-noise gradient (|g| < eps) to steps below lr * |g| / eps.
            torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
            continue
        # Adam normalises each gradient, so a wrong one moves its weight by ~lr = 1e-3 per step.
        assert (p - init[k]).abs().max() > 1e-3, f"{k} did not move"
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("mode", ["eval", "news_alpha=0"])
def test_other_cases_use_the_modules(mode, fused_calls):
    cfg = ModelConfig(news_alpha=0.0) if mode == "news_alpha=0" else ModelConfig()
    model = MultiBranchRanker(cfg).train(mode != "eval")
    x, y = batch(cfg, pairs=32, seed=1)
    model.seed_dropout(3)
    loss = model.pair_loss_backward(*x, y)
    got = grads(model)
    model.zero_grad(set_to_none=True)
    model.seed_dropout(3)
    torch.testing.assert_close(loss, plain_backward(model, x, y), rtol=0, atol=0)
    for k, g in grads(model).items():
        torch.testing.assert_close(got[k], g, rtol=0, atol=0, msg=k)
    assert fused_calls == []


@pytest.mark.parametrize("p", [0.1, HEAD_DROPOUT, 0.6, 0.95])
def test_keep_mask_is_inverted_dropout(p):
    mask = keep_mask(np.random.default_rng(0), 1_000_003, p)
    assert mask.dtype == np.float32 and mask.shape == (1_000_003,)
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / (1 - p))}
    kept = float((mask > 0).mean())
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / mask.size), (kept, 1 - p)


def test_bf16_news_matmul_computes_the_same_step(fused_calls):
    """The fused step's bf16 path (taken on AMX CPUs: the news encoder's first matmul and its
    weight gradient in bf16 with fp32 accumulation) against the fp32 path on the same bf16
    values. bf16 rounds the weights and the matmuls' outputs (~2^-9 relative), and a pairwise
    gradient is a sum of terms of opposite signs that amplifies that to a few percent, so each
    gradient is compared by direction: a wrong transpose or operand would point elsewhere."""
    cfg = ModelConfig()
    torch.manual_seed(0)
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=256, seed=1)
    emb16 = x[2].to(torch.bfloat16)
    losses, got = [], []
    for emb in (emb16, emb16.float()):
        model.zero_grad(set_to_none=True)
        model.seed_dropout(5)
        losses.append(model.pair_loss_backward(x[0], x[1], emb, y))
        got.append(grads(model))
    assert fused_calls == [1, 1]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=0)
    for k, g in got[1].items():
        if k == CANCELLED:
            continue
        cos = F.cosine_similarity(got[0][k].flatten(), g.flatten(), dim=0).item()
        assert cos > 0.98, (k, cos)
    # Not vacuous: bf16 rounding does show in the news encoder's first-layer gradient.
    assert not torch.equal(got[0]["news_encoder.0.weight"], got[1]["news_encoder.0.weight"])


def test_the_fused_step_knows_every_layer_of_the_model():
    """The fused step is written against the model's layers as they are: three Encoders and a
    Head, each exactly Linear - ReLU - Dropout - Linear (- ReLU), reached through `branches()`.
    A layer added anywhere (a LayerNorm, a GELU, a fourth branch) fails here by name, before the
    loss comparison above would catch it as a mismatch of numbers."""
    model = MultiBranchRanker(ModelConfig())
    encoder = [torch.nn.Linear, torch.nn.ReLU, model_module.Dropout, torch.nn.Linear,
               torch.nn.ReLU]  # fmt: skip
    head = encoder[:4]
    layout = {"fund_encoder": encoder, "price_encoder": encoder, "news_encoder": encoder,
              "output_head": head}  # fmt: skip
    assert [name for name, _ in model.named_children()] == list(layout)
    for name, child in model.named_children():
        assert [type(m) for m in child] == layout[name], name
    assert [enc for enc, _ in model.branches()] == [model.fund_encoder, model.price_encoder,
                                                    model.news_encoder]  # fmt: skip
