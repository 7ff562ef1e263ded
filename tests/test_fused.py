"""The CPU training path (`_FusedPairLoss`) against plain autograd through the nn modules.

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

from ranker.model import HEAD_DROPOUT, ModelConfig, MultiBranchRanker, keep_mask

NO_DROPOUT = {"fundamental_dropout": 0.0, "price_dropout": 0.0, "news_dropout": 0.0}
CONFIGS = {
    "default": ModelConfig(),
    "no-encoder-dropout": ModelConfig(**NO_DROPOUT),  # the head's Dropout(0.1) stays
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


def batch(cfg: ModelConfig, pairs: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(price, fund, emb) for 2 * pairs rows, and smoothed pair targets."""
    g = torch.Generator().manual_seed(seed)
    dims = (cfg.n_price_features, cfg.n_fundamental_features, cfg.n_embedding_dim)
    x = [torch.randn(2 * pairs, n, generator=g) for n in dims]
    label = (torch.rand(pairs, generator=g) > 0.5).float()
    return x, label * 0.9 + 0.05


def fused_loss(model: MultiBranchRanker, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    loss = model.pair_loss(*x, y)
    assert type(loss.grad_fn).__name__ == "_FusedPairLossBackward", type(loss.grad_fn).__name__
    return loss


def plain_loss(model: MultiBranchRanker, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model.pair_logits(*x), y)


def grads(model: MultiBranchRanker) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_gradients_match_autograd(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=300, seed=1)

    model.seed_dropout(7)
    fused = fused_loss(model, x, y)
    fused.backward()
    got = grads(model)
    model.zero_grad(set_to_none=True)
    model.seed_dropout(7)
    want = plain_loss(model, x, y)
    want.backward()
    expected = grads(model)

    torch.testing.assert_close(fused, want, rtol=1e-5, atol=0)
    assert set(got) == set(expected) == {n for n, _ in model.named_parameters()}
    for k, g in expected.items():
        if k == "output_head.3.bias":
            # s_i - s_j cancels the output bias: both gradients are rounding noise around 0.
            assert got[k].abs().item() < 1e-6 and g.abs().item() < 1e-6, (got[k], g)
            continue
        scale = g.abs().max().item()
        assert scale > 0, f"{k}: zero gradient, the comparison would be empty"
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-5 * scale, msg=k)


def test_other_seeds_draw_other_masks():
    """The gradients depend on the dropout seed, so the comparison above is not vacuous."""
    cfg = ModelConfig()
    model = MultiBranchRanker(cfg).train()
    x, y = batch(cfg, pairs=64, seed=1)
    losses = []
    for seed in (1, 2):
        model.seed_dropout(seed)
        losses.append(fused_loss(model, x, y).item())
    assert losses[0] != losses[1]


def test_adamw_steps_give_the_same_weights():
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
        for model, opt, loss_fn in ((a, opts[0], fused_loss), (b, opts[1], plain_loss)):
            model.seed_dropout([3, step])
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x, y).backward()
            opt.step()
    for (k, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if k == "output_head.3.bias":
            # Its gradient is rounding noise around 0 (s_i - s_j cancels it), which Adam turns
            # into steps of up to lr * |g| / eps: the two paths' noise differs.
            torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
            continue
        # Adam normalises each gradient, so a wrong one moves its weight by ~lr = 1e-3 per step.
        assert (p - init[k]).abs().max() > 1e-3, f"{k} did not move"
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=k)


def test_eval_and_no_grad_use_the_modules():
    cfg = ModelConfig()
    model = MultiBranchRanker(cfg)
    x, y = batch(cfg, pairs=32, seed=1)
    model.eval()
    loss = model.pair_loss(*x, y)
    assert type(loss.grad_fn).__name__ != "_FusedPairLossBackward"
    torch.testing.assert_close(loss, plain_loss(model, x, y), rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        model.seed_dropout(5)
        quiet = model.pair_loss(*x, y)
        model.seed_dropout(5)
        torch.testing.assert_close(quiet, plain_loss(model, x, y), rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, HEAD_DROPOUT, 0.6, 0.95])
def test_keep_mask_is_inverted_dropout(p):
    mask = keep_mask(np.random.default_rng(0), 1_000_003, p)
    assert mask.dtype == np.float32 and mask.shape == (1_000_003,)
    assert set(np.unique(mask)) == {np.float32(0), np.float32(1 / (1 - p))}
    kept = float((mask > 0).mean())
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / mask.size), (kept, 1 - p)
