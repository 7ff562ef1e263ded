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
import functools
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
from ranker.metrics import MIN_NAMES, Daily, daily, summarize
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.pairs import sample_pairs
from ranker.panel import Panel

METRICS = (
    "ic_sharpe", "mean_ic", "long_return", "long_sharpe",
    "short_return", "short_sharpe", "ls_return", "ls_sharpe",
)  # fmt: skip


PRECISIONS = ("fp32", "bf16", "auto")


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
    # fp32 | bf16 (embeddings stored in bfloat16, see `_Step`) | auto (bf16 where bf16 matmuls
    # pay: GPUs and AMX CPUs). fp32 by default: the same spec selects the same configs anywhere.
    precision: str = "fp32"
    # On a GPU, replay each step as one captured CUDA graph. Off until a GPU run measures it
    # (benchmarks/bench_gpu.py).
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("batch_size", "epochs", "eval_every", "k"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                errors.append(f"train.{name}={v!r}: must be a positive integer")
        if isinstance(self.k, int) and self.k > MIN_NAMES:
            errors.append(
                f"train.k={self.k!r}: must be at most {MIN_NAMES} (the metrics skip dates with "
                f"fewer than {MIN_NAMES} names, so a book of k names exists on every date they use)"
            )
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            errors.append(f"train.seed={self.seed!r}: must be a non-negative integer")
        if not (_finite(self.learning_rate) and self.learning_rate > 0):
            errors.append(f"train.learning_rate={self.learning_rate!r}: must be a number > 0")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            errors.append(f"train.weight_decay={self.weight_decay!r}: must be a number >= 0")
        if not (_finite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
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
class Progress:
    """Where a training run stands after an evaluation: epochs done, the best evaluation so far,
    the history of evaluations, training time, and how often it was resumed."""

    epoch: int = 0  # epochs completed
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # the weights of the best evaluation
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    restored: int = 0  # how many times this run was resumed from a checkpoint

    def record(
        self,
        epoch: int,
        metrics: dict[str, float],
        metric: str,
        model: MultiBranchRanker,
        train_loss: float,
        seconds: float,
    ) -> bool:
        """Record an evaluation after `epoch` epochs; whether it is the best so far by `metric`
        (the first evaluation always is; ties keep the earlier one)."""
        is_best = self.best_state is None or metrics[metric] > self.best_metric
        if is_best:
            self.best_metric, self.best_epoch, self.best_metrics = metrics[metric], epoch, metrics
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.epoch, self.seconds = epoch, seconds
        self.history.append({"epoch": epoch, "train_loss": train_loss, "seconds": seconds,
                             **metrics})  # fmt: skip
        return is_best


@dataclass
class TrainState:
    """Everything `fit` needs to continue a run after an evaluation: what a trial checkpoint
    holds. `to_dict`/`from_dict` are its one file format: tensors and plain Python values only,
    so `torch.load(weights_only=True)` reads it and no class is pickled."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    progress: Progress

    @classmethod
    def capture(
        cls,
        model: MultiBranchRanker,
        opt: torch.optim.Optimizer,
        sched: Any,
        train_config: TrainConfig,
        progress: Progress,
    ) -> TrainState:
        """A copy of the live run: later steps do not change it (the optimizer keeps mutating
        its moment tensors in place, so they are deep-copied)."""
        p = progress
        return cls(
            model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            optimizer=copy.deepcopy(opt.state_dict()),
            scheduler=copy.deepcopy(sched.state_dict()),
            model_config=model.config.to_dict(),
            train_config=train_config.to_dict(),
            progress=replace(p, best_metrics=dict(p.best_metrics),
                             history=[dict(h) for h in p.history]),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
            "model_config": self.model_config, "train_config": self.train_config,
            "epoch": p.epoch, "best_metric": p.best_metric, "best_epoch": p.best_epoch,
            "best_state": p.best_state, "best_metrics": dict(p.best_metrics),
            "history": [dict(h) for h in p.history], "seconds": p.seconds, "restored": p.restored,
        }  # fmt: skip

    def last_evaluation(self) -> Evaluation:
        """The evaluation this state was saved after, as `fit` handed it to `on_eval` (restored
        once more): what a run resumed from the state of a finished run reports, since `fit`
        has no epoch left to train."""
        p = self.progress
        last = p.history[-1]
        again = replace(p, restored=p.restored + 1)
        state = replace(self, progress=again)
        return Evaluation(
            epoch=p.epoch, metrics={k: v for k, v in last.items() if k in METRICS},
            train_loss=last["train_loss"], is_best=p.best_epoch == p.epoch,
            best_epoch=p.best_epoch, best_metrics=dict(p.best_metrics), seconds=p.seconds,
            restored=again.restored, state=lambda: state,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        progress = Progress(
            epoch=int(d["epoch"]), best_metric=float(d["best_metric"]),
            best_epoch=int(d["best_epoch"]), best_state=d["best_state"],
            best_metrics=dict(d["best_metrics"]), history=[dict(h) for h in d["history"]],
            seconds=float(d["seconds"]), restored=int(d.get("restored", 0)),
        )  # fmt: skip
        return cls(d["model"], d["optimizer"], d["scheduler"], d["model_config"],
                   d["train_config"], progress)  # fmt: skip


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
    restored: int  # how many times the run was resumed from a checkpoint
    state: Callable[[], TrainState] = field(repr=False)  # resumable state, built on demand
    daily: Daily | None = field(default=None, repr=False)  # this evaluation's per-date series


@dataclass
class FitResult:
    model: MultiBranchRanker
    config: ModelConfig
    metrics: dict[str, float]  # validation metrics of the restored best state
    best_epoch: int
    history: list[dict[str, Any]]
    seconds: float


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
        if panel.rows is None:
            part = [t[s : s + batch] for t in (price, fund, emb)]
        else:  # a view of a larger Panel's features: gather its rows
            rows = torch.from_numpy(panel.rows[s : s + batch])
            part = [torch.index_select(t, 0, rows) for t in (price, fund, emb)]
        out[s : s + batch] = model(*[t.to(dev).float() for t in part]).cpu().numpy()
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
    resume: TrainState | None = None,
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

    Raises:
        ValueError: `resume` was written by another configuration.
    """
    cfg = with_input_sizes(model_cfg, train)
    tc = replace(train_cfg, precision=resolve_precision(train_cfg.precision, device))
    torch.manual_seed(tc.seed)
    model = MultiBranchRanker(cfg).to(device)
    step = _Step(model, tc, train, device)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(step.opt, T_max=tc.epochs)
    progress = Progress()
    if resume is not None:
        progress = _restore(resume, model, step.opt, sched, cfg, tc)
    t0 = time.perf_counter() - progress.seconds
    for epoch in range(progress.epoch, tc.epochs):
        train_loss = step.epoch(epoch)
        sched.step()
        done = epoch + 1
        if done % tc.eval_every and done != tc.epochs:
            continue
        metrics, series = evaluate_model(model, val, tc.k)
        seconds = time.perf_counter() - t0
        is_best = progress.record(done, metrics, tc.metric, model, train_loss, seconds)
        if log:
            log(
                f"  epoch {done:3d}  loss {train_loss:.4f}  IC sharpe {metrics['ic_sharpe']:6.2f}  "
                f"mean IC {metrics['mean_ic']:+.4f}  long {metrics['long_sharpe']:5.2f}  "
                f"short {metrics['short_sharpe']:5.2f}  {seconds:6.1f}s"
            )
        if on_eval is not None:
            snapshot = functools.partial(TrainState.capture, model, step.opt, sched, tc, progress)
            on_eval(Evaluation(done, metrics, train_loss, is_best, progress.best_epoch,
                               dict(progress.best_metrics), seconds, progress.restored, snapshot,
                               series))  # fmt: skip

    if progress.best_state is None:
        raise ValueError(f"no evaluation ran: train.epochs={tc.epochs}")
    model.load_state_dict(progress.best_state)
    model.eval()
    return FitResult(model, cfg, progress.best_metrics, progress.best_epoch, progress.history,
                     time.perf_counter() - t0)  # fmt: skip


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """`auto` as the precision it stands for on `device` (bf16 where bf16 matmuls pay: GPUs and
    CPUs with AMX; fp32 elsewhere); fp32 and bf16 as they are."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_matmul_pays(device) else "fp32"


def _restore(
    state: TrainState,
    model: MultiBranchRanker,
    opt: torch.optim.Optimizer,
    sched: Any,
    cfg: ModelConfig,
    tc: TrainConfig,
) -> Progress:
    """Load a checkpoint's weights and optimizer into the live run; its progress, resumed once
    more.

    Raises:
        ValueError: the state was written by another configuration.
    """
    if state.model_config != cfg.to_dict() or state.train_config != tc.to_dict():
        raise ValueError(
            "the checkpoint to resume was written by a different configuration; "
            "start the trial afresh or resume with the configuration that wrote it"
        )
    model.load_state_dict(state.model)
    opt.load_state_dict(state.optimizer)
    sched.load_state_dict(state.scheduler)
    p = state.progress
    return replace(p, best_metrics=dict(p.best_metrics), history=[dict(h) for h in p.history],
                   restored=p.restored + 1)  # fmt: skip


class _Step:
    """The training steps of one run: the optimizer, the step's input buffers, and an epoch of
    pair-wise steps (on a GPU with `cuda_graphs`, full batches replay one captured graph).

    A step's news inputs hold bf16 values when the config asks for bf16, whatever the Panel
    holds, and are multiplied in bf16 where that beats fp32 (GPUs, AMX CPUs). Elsewhere they are
    widened to fp32 after the gather: an fp32 matmul multiplies the same bf16 values exactly
    (their products fit fp32's mantissa), at the fp32 rate; the weights stay fp32.
    """

    def __init__(
        self, model: MultiBranchRanker, tc: TrainConfig, train: Panel, device: str | torch.device
    ) -> None:
        self.model, self.tc, self.train, self.device = model, tc, train, device
        self.graphed = torch.device(device).type == "cuda" and tc.cuda_graphs
        if self.graphed:
            # A step replayed as a CUDA graph reads the learning rate from a tensor the
            # scheduler updates in place, and an optimizer whose state never leaves the GPU.
            self.opt = torch.optim.AdamW(model.parameters(), weight_decay=tc.weight_decay,
                                         lr=torch.tensor(tc.learning_rate, device=device),
                                         capturable=True, foreach=True)  # fmt: skip
        else:
            # The fused kernel updates all parameters in one pass: ~8x faster than the
            # per-tensor loop on the CPU for this many small tensors, and the same arithmetic.
            self.opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate,
                                         weight_decay=tc.weight_decay, fused=True)  # fmt: skip
        self.inputs = [as_tensor(a).to(device) for a in (train.price, train.fund, train.emb)]
        # A view of a larger Panel's features: a step's rows map to the features' rows.
        self.feature_rows = None if train.rows is None else torch.from_numpy(train.rows).to(device)
        self.bf16 = tc.precision == "bf16"
        self.x_dtype = torch.bfloat16 if self.bf16 and bf16_matmul_pays(device) else torch.float32
        # Each step gathers its rows into the same buffers: faster than a fresh 3 MB a step.
        rows_max = 2 * tc.batch_size
        self.bufs = [torch.empty(rows_max, t.shape[1], dtype=t.dtype, device=device)
                     for t in self.inputs]  # fmt: skip
        n_emb = self.inputs[2].shape[1]
        self.casts = [torch.empty(rows_max, n_emb, dtype=d, device=device)
                      for d in (torch.bfloat16, self.x_dtype)]  # fmt: skip
        self.graph: CudaGraphStep | None = None

    def epoch(self, epoch: int) -> float:
        """Train one epoch (0-based) on that epoch's pairs and dropout masks, which depend only
        on (seed, epoch); the mean training loss."""
        tc, model, device = self.tc, self.model, self.device
        rng = np.random.default_rng([tc.seed, epoch])
        torch.manual_seed(tc.seed * 1_000_003 + epoch + 1)  # dropout masks on a GPU
        model.seed_dropout([tc.seed, epoch, 1])  # dropout masks on the CPU
        i, j, label = sample_pairs(self.train.bounds, self.train.returns, rng)
        ij = torch.from_numpy(np.stack([i, j])).to(device)  # (2, P)
        smooth = tc.label_smoothing
        target = torch.from_numpy(label * (1 - smooth) + 0.5 * smooth).to(device)
        model.train()
        total, count = torch.zeros((), device=device), 0
        for s in range(0, len(label), tc.batch_size):
            rows = ij[:, s : s + tc.batch_size].reshape(-1)  # (2B,): the i's then the j's
            x = self._gather(rows)
            y = target[s : s + tc.batch_size]
            if self.graphed and len(y) == tc.batch_size:  # a full batch: replay the graph
                if self.graph is None:
                    self.graph = CudaGraphStep(model, self.opt, x, y)
                loss = self.graph(x, y)
            else:
                self.opt.zero_grad(set_to_none=True)
                loss = model.pair_loss_backward(*x, y)  # on the CPU: fused, without autograd
                self.opt.step()
            total += loss * len(y)
            count += len(y)
        return float(total) / max(count, 1)

    def _gather(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """(price, fund, emb) of `rows`, in the step's buffers and the news dtype it uses."""
        if self.feature_rows is not None:
            rows = torch.index_select(self.feature_rows, 0, rows)
        # index_select is a plain row gather, ~5x faster than advanced indexing here.
        x = [torch.index_select(t, 0, rows, out=b[: len(rows)])
             for t, b in zip(self.inputs, self.bufs, strict=True)]  # fmt: skip
        if self.bf16 and x[2].dtype != torch.bfloat16:  # round to bf16 values
            x[2] = self.casts[0][: len(rows)].copy_(x[2])
        if x[2].dtype != self.x_dtype:
            x[2] = self.casts[1][: len(rows)].copy_(x[2])
        return x


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
