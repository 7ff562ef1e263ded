"""One training run: pairwise BCE on random within-date pairs, AdamW, cosine schedule.

`fit` is the one training function: a unit test, the CLI's `train`, a Ray trial and the final
model all call it. It evaluates on the validation Panel every `eval_every` epochs and at the last,
hands each evaluation to `on_eval` (the Ray trainable turns it into a report with a checkpoint),
and restores the best state by `metric` at the end. Runs are reproducible: the pairs and dropout
masks of epoch e depend only on (seed, e), so a run resumed from a checkpoint after epoch e
continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ranker.config import ConfigError, strict_from_dict
from ranker.device import bf16_matmul_pays
from ranker.metrics import Daily, daily, summarize
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.pairs import sample_pairs
from ranker.panel import Panel

METRICS = (
    "ic_sharpe", "mean_ic", "long_return", "long_sharpe",
    "short_return", "short_sharpe", "ls_return", "ls_sharpe",
)  # fmt: skip


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.1
    epochs: int = 15
    eval_every: int = 5
    metric: str = "ic_sharpe"
    k: int = 5
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16: embeddings stored in bfloat16 (see `fit`)
    cuda_graphs: bool = True  # on a GPU, replay each step as one captured CUDA graph

    def __post_init__(self) -> None:
        errors = []
        for name in ("batch_size", "epochs", "eval_every", "k"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                errors.append(f"train.{name}={v!r}: must be a positive integer")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            errors.append(f"train.learning_rate={self.learning_rate!r}: must be > 0")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            errors.append(f"train.weight_decay={self.weight_decay!r}: must be >= 0")
        if not (isinstance(self.label_smoothing, int | float) and 0 <= self.label_smoothing < 1):
            errors.append(f"train.label_smoothing={self.label_smoothing!r}: must be in [0, 1)")
        if self.precision not in PRECISIONS:
            errors.append(f"train.precision={self.precision!r}: must be one of {list(PRECISIONS)}")
        if self.metric not in METRICS:
            errors.append(f"train.metric={self.metric!r}: must be one of {list(METRICS)}")
        if errors:
            raise ConfigError(errors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return strict_from_dict(cls, d, "train")


@dataclass
class Evaluation:
    """One evaluation on the validation set, as handed to `on_eval`."""

    epoch: int  # 1-based epochs completed
    metrics: dict[str, float]
    train_loss: float
    is_best: bool
    best_epoch: int
    best_metrics: dict[str, float]
    seconds: float  # training time so far
    state: Callable[[], dict[str, Any]] = field(repr=False)  # resumable state, built on demand
    daily: Daily | None = field(default=None, repr=False)  # this evaluation's per-date series


@dataclass
class FitResult:
    model: MultiBranchRanker
    config: ModelConfig
    metrics: dict[str, float]  # validation metrics of the restored best state
    best_epoch: int
    history: list[dict[str, Any]]
    seconds: float


def with_input_sizes(cfg: ModelConfig, panel: Panel) -> ModelConfig:
    """The config with its input sizes taken from the data."""
    return replace(
        cfg,
        n_fundamental_features=panel.fund.shape[1],
        n_price_features=panel.price.shape[1],
        n_embedding_dim=panel.emb.shape[1],
    )


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor over a (possibly read-only) array; bfloat16 bits (uint16, see
    `Panel.emb`) come out as torch.bfloat16. Nothing here ever writes into it."""
    with warnings.catch_warnings():
        # The object store's arrays are read-only, which torch warns about; nothing writes.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        if arr.dtype == np.uint16:
            return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(arr)


@torch.no_grad()
def score(model: MultiBranchRanker, panel: Panel, batch: int = 8192) -> np.ndarray:
    """(N,) float64 model scores of every row, in eval mode, on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    fund, price, emb = as_tensor(panel.fund), as_tensor(panel.price), as_tensor(panel.emb)
    out = np.empty(len(panel), dtype=np.float64)
    for s in range(0, len(panel), batch):
        part = [t[s : s + batch].to(dev).float() for t in (price, fund, emb)]
        out[s : s + batch] = model(*part).cpu().numpy()
    return out


def evaluate_model(
    model: MultiBranchRanker, panel: Panel, k: int = 5
) -> tuple[dict[str, float], Daily]:
    """The notebook's metrics of the model's scores on a Panel, and the per-date series."""
    d = daily(panel.bounds, score(model, panel), panel.returns, k=k)
    return summarize(d), d


def fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train: Panel,
    val: Panel,
    *,
    on_eval: Callable[[Evaluation], None] | None = None,
    resume: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Train a MultiBranchRanker and restore its best validation state.

    Args:
        model_cfg: architecture (input sizes are taken from `train`).
        train_cfg: optimisation, epochs, evaluation cadence, selection metric and seed.
        train, val: Panels (may be read-only views from the object store).
        on_eval: called after each evaluation (every `eval_every` epochs and the last).
        resume: a state from `Evaluation.state()`; training continues after its epoch.
        log: called with one line per evaluation.
        device: where to train; the training Panel is copied there once (a no-op on the CPU).

    Returns:
        FitResult with the model in its best state and that state's validation metrics.
    """
    cfg = with_input_sizes(model_cfg, train)
    tc = train_cfg
    torch.manual_seed(tc.seed)
    model = MultiBranchRanker(cfg).to(device)
    graphed = torch.device(device).type == "cuda" and tc.cuda_graphs
    if graphed:
        # A step replayed as a CUDA graph reads the learning rate from a tensor the scheduler
        # updates in place, and an optimizer whose state never leaves the GPU (capturable).
        opt = torch.optim.AdamW(model.parameters(), weight_decay=tc.weight_decay,
                                lr=torch.tensor(tc.learning_rate, device=device),
                                capturable=True, foreach=True)  # fmt: skip
    else:
        # The fused kernel updates all parameters in one pass: ~8x faster than the per-tensor
        # loop on the CPU for this many small tensors, and the same arithmetic.
        opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate,
                                weight_decay=tc.weight_decay, fused=True)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs)
    start_epoch, best_metric, best_epoch = 0, -math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    if resume is not None:
        if resume["model_config"] != cfg.to_dict() or resume["train_config"] != tc.to_dict():
            raise ValueError(
                "the checkpoint to resume was written by a different configuration; "
                "start the trial afresh or resume with the configuration that wrote it"
            )
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start_epoch = int(resume["epoch"])
        best_metric = float(resume["best_metric"])
        best_epoch = int(resume["best_epoch"])
        best_state = resume["best_state"]
        best_metrics = dict(resume["best_metrics"])
        history = [dict(h) for h in resume["history"]]
        elapsed = float(resume["seconds"])

    fund, price, emb = (as_tensor(a).to(device) for a in (train.fund, train.price, train.emb))
    # A step's news inputs hold bf16 values when the config asks for bf16, whatever the Panel
    # holds, and are multiplied in bf16 where that beats fp32 (GPUs, AMX CPUs). Elsewhere they
    # are widened to fp32 after the gather: an fp32 matmul multiplies the same bf16 values
    # exactly (their products fit fp32's mantissa), at the fp32 rate; the weights stay fp32.
    bf16 = tc.precision == "bf16"
    x_dtype = torch.bfloat16 if bf16 and bf16_matmul_pays(device) else torch.float32
    # Each step gathers its rows into the same buffers: faster than a fresh 3 MB a step.
    rows_max = 2 * tc.batch_size
    bufs = [torch.empty(rows_max, t.shape[1], dtype=t.dtype, device=device)
            for t in (price, fund, emb)]  # fmt: skip
    casts = [torch.empty(rows_max, emb.shape[1], dtype=d, device=device)
             for d in (torch.bfloat16, x_dtype)]  # fmt: skip
    graph: CudaGraphStep | None = None
    smooth = tc.label_smoothing
    t0 = time.perf_counter() - elapsed
    for epoch in range(start_epoch, tc.epochs):
        rng = np.random.default_rng([tc.seed, epoch])
        torch.manual_seed(tc.seed * 1_000_003 + epoch + 1)  # dropout masks on a GPU
        model.seed_dropout([tc.seed, epoch, 1])  # dropout masks on the CPU
        i, j, label = sample_pairs(train.bounds, train.returns, rng)
        ij = torch.from_numpy(np.stack([i, j])).to(device)  # (2, P)
        target = torch.from_numpy(label * (1 - smooth) + 0.5 * smooth).to(device)
        model.train()
        total, count = torch.zeros((), device=device), 0
        for s in range(0, len(label), tc.batch_size):
            rows = ij[:, s : s + tc.batch_size].reshape(-1)  # (2B,): the i's then the j's
            # index_select is a plain row gather, ~5x faster than advanced indexing here.
            x = [torch.index_select(t, 0, rows, out=b[: len(rows)])
                 for t, b in zip((price, fund, emb), bufs, strict=True)]  # fmt: skip
            if bf16 and x[2].dtype != torch.bfloat16:  # round to bf16 values
                x[2] = casts[0][: len(rows)].copy_(x[2])
            if x[2].dtype != x_dtype:
                x[2] = casts[1][: len(rows)].copy_(x[2])
            y = target[s : s + tc.batch_size]
            if graphed and len(y) == tc.batch_size:  # a full batch: replay the captured step
                if graph is None:
                    graph = CudaGraphStep(model, opt, x, y)
                loss = graph(x, y)
            else:
                opt.zero_grad(set_to_none=True)
                loss = model.pair_loss_backward(*x, y)  # on the CPU: fused, without autograd
                opt.step()
            total += loss * len(y)
            count += len(y)
        sched.step()
        done = epoch + 1
        if done % tc.eval_every and done != tc.epochs:
            continue
        metrics, series = evaluate_model(model, val, tc.k)
        current = metrics[tc.metric]
        is_best = best_state is None or current > best_metric
        if is_best:
            best_metric, best_epoch, best_metrics = current, done, metrics
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        seconds = time.perf_counter() - t0
        train_loss = float(total) / max(count, 1)
        history.append({"epoch": done, "train_loss": train_loss, "seconds": seconds, **metrics})
        if log:
            log(
                f"  epoch {done:3d}  loss {train_loss:.4f}  IC sharpe {metrics['ic_sharpe']:6.2f}  "
                f"mean IC {metrics['mean_ic']:+.4f}  long {metrics['long_sharpe']:5.2f}  "
                f"short {metrics['short_sharpe']:5.2f}  {seconds:6.1f}s"
            )
        if on_eval is not None:
            snapshot = _state_fn(model, opt, sched, cfg, tc, done, best_metric, best_epoch,
                                 best_state, best_metrics, history, seconds)  # fmt: skip
            on_eval(
                Evaluation(
                    done,
                    metrics,
                    train_loss,
                    is_best,
                    best_epoch,
                    dict(best_metrics),
                    seconds,
                    snapshot,
                    series,
                )
            )

    assert best_state is not None, f"no evaluation ran: epochs={tc.epochs}"
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, cfg, best_metrics, best_epoch, history, time.perf_counter() - t0)


class CudaGraphStep:
    """One full-batch training step (forward, backward, optimizer step) captured once as a CUDA
    graph and replayed: a step of this small model is a few hundred tiny kernels, so launching
    them one by one from Python, not the GPU's arithmetic, bounds an eager step.

    Capture follows PyTorch's whole-network recipe: a few warm-up steps on a side stream on the
    first batch, then capture into a private memory pool. The warm-up steps change the weights
    and the optimizer state, so both are copied back in place afterwards (the graph keeps their
    addresses): the graphed run starts from the same state as the eager one. Inputs are copied
    into the graph's static tensors at every call; dropout draws from the CUDA generator, whose
    seed and offset each replay reads, as eager kernels do.
    """

    WARMUP = 3

    def __init__(
        self,
        model: MultiBranchRanker,
        opt: torch.optim.Optimizer,
        x: list[torch.Tensor],
        y: torch.Tensor,
    ) -> None:
        self.model, self.opt = model, opt
        self.static_x = [t.clone() for t in x]
        self.static_y = y.clone()
        saved_params = [p.detach().clone() for p in model.parameters()]
        saved_state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v)
                               for k, v in opt.state[p].items()}
                       for p in model.parameters() if p in opt.state}  # fmt: skip
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._step(zero=False)
        # The gradients live in the graph's memory pool: hold them, whatever .grad becomes.
        self.static_grads = [p.grad for p in model.parameters()]
        with torch.no_grad():
            for p, saved in zip(model.parameters(), saved_params, strict=True):
                p.copy_(saved)
                p.grad = None if p.grad is None else p.grad.zero_()
            for p in model.parameters():
                for k, v in opt.state[p].items():
                    if torch.is_tensor(v):
                        old = saved_state.get(id(p), {}).get(k)
                        v.copy_(old) if old is not None else v.zero_()
        torch.cuda.set_rng_state(rng)

    def _step(self, zero: bool = True) -> torch.Tensor:
        if zero:
            self.opt.zero_grad(set_to_none=True)
        loss = self.model.pair_loss_backward(*self.static_x, self.static_y)
        self.opt.step()
        return loss

    def __call__(self, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        for static, t in zip(self.static_x, x, strict=True):
            static.copy_(t)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.clone()


def _state_fn(model, opt, sched, cfg, tc, epoch, best_metric, best_epoch, best_state,
              best_metrics, history, seconds) -> Callable[[], dict[str, Any]]:  # fmt: skip
    def state() -> dict[str, Any]:
        # Only tensors and plain Python: loadable with torch.load(weights_only=True).
        return {
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            # Deep copies: the live optimizer keeps mutating its moment tensors in place.
            "optimizer": copy.deepcopy(opt.state_dict()),
            "scheduler": copy.deepcopy(sched.state_dict()),
            "model_config": cfg.to_dict(),
            "train_config": tc.to_dict(),
            "epoch": epoch,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "best_state": best_state,
            "best_metrics": dict(best_metrics),
            "history": [dict(h) for h in history],
            "seconds": seconds,
        }

    return state
