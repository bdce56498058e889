"""The training loop: one loop for every model and method (they differ only in the DetectionTask they bring).

    trainer = Trainer(cfg, task, train_set, val_set, RunDir("runs/x"), ctx)
    result = trainer.fit()          # FitResult: "finished" | "interrupted", epoch, step, best mAP, checkpoint

- AdamW + OneCycleLR (beta1 cycled), gradient clipping, AMP (autocast + GradScaler) on CUDA only.
- DDP when the DistContext says so; the data order is world-size invariant (`EpochSampler`): the global batch of
  step i is the same frames for 1 or N processes, and the detection losses are per-frame means, so N processes
  with batch b train like one process with batch N * b (batch norm included, see training.distributed).
- Exact resume: the shuffle order is a function of (seed, epoch), each frame's augmentation of (seed, epoch, index)
  (KittiDataset), so the remaining iterations of an interrupted epoch are replayed by skipping the done ones in
  the sampler; the global RNG states are restored at the point where they were captured.
- SIGINT / SIGTERM: the current step finishes, a checkpoint is written, fit() returns "interrupted". All
  processes agree on the stop step (one all-reduce of the flag per step).
- glibc malloc keeps freed memory for the next step (training/allocator.py, docs/BENCH.md "Training step").
- Logs (rank 0): tqdm, TensorBoard, losses.csv / epochs.csv, periodic KITTI evaluation; best.pt by mAP.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from clean_ros.atomic import atomic_open
from clean_ros.yaml_config import dump_yaml
from training import checkpoint as ckpt_io
from training.allocator import retain_freed_memory
from training.checkpoint import TrainingState
from training.train_config import TrainConfig
from training.data.loader import Collator, _WorkerSeeder
from training.distributed import DistContext, convert_batchnorm
from training.evaluate_task import evaluate_task
from training.run_dir import RunDir, get_logger
from training.task import DetectionTask

METRIC_NAME = "mAP_3d_moderate_R40"


# --------------------------------------------------------------------------- seeding
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python / numpy / torch (CPU and CUDA); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence((int(seed), int(epoch))).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Indices of this process for one epoch: a permutation of (seed, epoch), padded to a multiple of the world
    size, split round-robin over ranks (rank r takes positions r, r + W, ...), minus the first `start` indices.

    The global batch of step i (batch b per process) is positions [i*b*W, (i+1)*b*W) of the permutation, whatever W.
    """

    def __init__(self, dataset_size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if dataset_size < 1:
            raise ValueError("EpochSampler needs a non-empty dataset")
        self.dataset_size = int(dataset_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(self.dataset_size / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this rank (the frames of already-done iterations)."""
        self.start = int(start)

    def rank_indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]  # pad by repeating the start, as DDP samplers do
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def make_train_loader(dataset: Dataset, collate: Collator, batch_size: int, workers: int, seed: int,
                      ctx: DistContext) -> DataLoader:
    sampler = EpochSampler(len(dataset), seed, shuffle=True, rank=ctx.rank, world_size=ctx.world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      drop_last=False, pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                      worker_init_fn=_WorkerSeeder(seed, dataset) if workers > 0 else None)


# --------------------------------------------------------------------------- stop requests
class StopFlag:
    """Set by SIGINT / SIGTERM (first signal: finish the step and save; a second SIGINT aborts at once)."""

    def __init__(self):
        self.requested = False
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers (the caller stops us by other means)
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason} received: finishing the current step, then saving a checkpoint "
              f"(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)


@dataclass
class FitResult:
    status: str  # "finished" | "interrupted"
    epoch: int  # epoch to continue in
    iteration: int
    global_step: int
    best_metric: float
    metrics: dict[str, float]
    checkpoint: Path | None  # last checkpoint written (rank 0), None elsewhere
    seconds: float


def grad_norms_due(global_step: int, log_interval: int, grad_norm_interval: int) -> bool:
    """Whether step global_step (0-based) logs the per-part gradient norms by the cadence: the first step of the
    log_interval cadence at or after each multiple of grad_norm_interval (steps counted from 1). Stateless, so a
    resumed run keeps the cadence."""
    step = global_step + 1
    return step % log_interval == 0 and step % grad_norm_interval < log_interval


def part_grad_norms(parts: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, float]:
    """"grad/<part>" -> L2 norm of that loss part's gradient over params: one more backward per part, the graph kept
    (retain_graph) and no .grad touched, so the step's own backward and the weights are unaffected."""
    norms = {}
    for name, loss in parts.items():
        if not loss.requires_grad:
            norms[f"grad/{name}"] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[f"grad/{name}"] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


class Trainer:
    def __init__(self, cfg: TrainConfig, task: DetectionTask, train_set: Dataset, val_set: Dataset | None,
                 run_dir: RunDir, ctx: DistContext | None = None, progress: bool = True,
                 resume: dict[str, Any] | None = None, config_yaml: str | None = None):
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.run_dir = run_dir
        self.log = get_logger()
        self.train_set = train_set
        self.val_set = val_set
        self.config_yaml = config_yaml if config_yaml is not None else dump_yaml(cfg)
        self.progress = progress and self.ctx.is_main
        self.device = self.ctx.device
        self.use_amp = cfg.amp and self.device.type == "cuda"
        # Re-use freed activations instead of page-faulting them back every step (training/allocator.py): without
        # it batch 2 trained fewer samples/s than batch 1.
        allocator = retain_freed_memory()
        if self.ctx.is_main:
            self.log.info(allocator.reason)

        if cfg.batchnorm_momentum is not None:
            for module in task.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = cfg.batchnorm_momentum
        if self.ctx.distributed and cfg.sync_batchnorm:
            task.model = convert_batchnorm(task.model, self.device)
        self.task = task.to(self.device)
        self.model_for_step: torch.nn.Module = self.task
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model_for_step = DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        collate = Collator.from_config(cfg.model, training=True, extra=getattr(task, "extra_voxelizers", None))
        self.train_loader = make_train_loader(train_set, collate, cfg.batch_size, cfg.workers, cfg.seed, self.ctx)
        self.sampler: EpochSampler = self.train_loader.sampler
        self.iters_per_epoch = math.ceil(self.sampler.per_rank / cfg.batch_size)

        opt = cfg.optimizer
        params = [p for p in self.task.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=opt.lr_max / opt.div_factor,
                                           betas=(opt.beta1_max, opt.beta2), weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=opt.lr_max, total_steps=cfg.epochs * self.iters_per_epoch,
            pct_start=opt.pct_start, anneal_strategy="cos", cycle_momentum=True, base_momentum=opt.beta1_min,
            max_momentum=opt.beta1_max, div_factor=opt.div_factor, final_div_factor=opt.final_div_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = TrainingState(world_size=self.ctx.world_size)
        self._resume_rng: dict[str, Any] | None = None
        if resume is not None:
            self._load_resume(resume)
        self.stop = StopFlag()
        self._epoch_has_grad_norms = False
        self._session: tuple[float, float] | None = None  # fit(): (its perf_counter start, train_seconds before it)

    # ------------------------------------------------------------------ resume
    def _load_resume(self, ckpt: dict[str, Any]) -> None:
        self.task.model.load_state_dict(ckpt["model"])
        self.task.load_loss_term_state(ckpt.get("loss_terms", {}))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.use_amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = ckpt_io.training_state(ckpt)
        if self.state.world_size != self.ctx.world_size:
            self.log.warning(f"checkpoint was written by {self.state.world_size} process(es), resuming with "
                             f"{self.ctx.world_size}: the run continues, but not bit-identically")
            self.state.world_size = self.ctx.world_size
        if self.state.iteration >= self.iters_per_epoch:
            raise ckpt_io.CheckpointError(f"checkpoint iteration {self.state.iteration} >= iterations per epoch "
                                          f"{self.iters_per_epoch}: the dataset or batch size changed")
        self._resume_rng = ckpt["rng"]

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dict(self) -> dict[str, Any]:
        if self._session is not None:
            self.state.train_seconds = self._session[1] + time.perf_counter() - self._session[0]
        return ckpt_io.build_checkpoint(
            model_state=self.task.model.state_dict(), loss_terms=self.task.loss_term_state(),
            optimizer_state=self.optimizer.state_dict(), scheduler_state=self.scheduler.state_dict(),
            scaler_state=self.scaler.state_dict() if self.use_amp else {}, state=self.state,
            config_yaml=self.config_yaml)

    def save_checkpoint(self, epoch_file: bool = False, best: bool = False) -> Path | None:
        if not self.ctx.is_main:
            return None
        folder = self.run_dir.checkpoints
        last = ckpt_io.atomic_torch_save(self._checkpoint_dict(), folder / ckpt_io.LAST_NAME)
        if epoch_file:
            _atomic_copy(last, folder / f"epoch_{self.state.epoch:04d}.pt")
            self._prune_epoch_checkpoints()
        if best:
            _atomic_copy(last, folder / ckpt_io.BEST_NAME)
        return last

    def _prune_epoch_checkpoints(self) -> None:
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        for old in sorted(self.run_dir.checkpoints.glob("epoch_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch) -> dict[str, float] | None:
        """Forward, backward, clip, optimiser and scheduler step. Returns the losses when this step is logged."""
        batch = batch.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()
        with autocast:
            result = self.model_for_step(batch)
        if not torch.isfinite(result.total.detach()):
            parts = {k: float(v.detach()) for k, v in result.parts.items()}
            raise FloatingPointError(f"loss is not finite at epoch {self.state.epoch} iteration "
                                     f"{self.state.iteration}: {parts}; try a lower optimizer.lr_max")
        on_cadence = (self.state.global_step + 1) % self.cfg.log_interval == 0
        logged = on_cadence or self.state.iteration + 1 == self.iters_per_epoch
        # Per-part gradient norms cost one more backward per part: every grad_norm_interval steps (grad_norms_due),
        # and on the epoch's last (always logged) step only when the epoch has none yet, so every epoch has them
        # without paying a batch-sized extra per epoch (docs/BENCH.md "Training step: batch 1 vs batch 2",
        # "Per-part gradient norms").
        part_norms = {}
        last_step = self.state.iteration + 1 == self.iters_per_epoch
        if (grad_norms_due(self.state.global_step, self.cfg.log_interval, self.cfg.grad_norm_interval)
                or (last_step and not self._epoch_has_grad_norms)):
            part_norms = self._part_grad_norms(result.parts)
            self._epoch_has_grad_norms = self._epoch_has_grad_norms or bool(part_norms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.total).backward()
        grad_norm = None
        if self.cfg.optimizer.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if not logged:
            return None
        values = torch.stack([result.total.detach().float(), *(v.detach().float() for v in result.parts.values())])
        values = self.ctx.all_reduce_mean(values).tolist()
        losses = dict(zip(["total", *result.parts], values))
        if grad_norm is not None:
            losses["grad_norm"] = float(self.ctx.all_reduce_mean(grad_norm.detach().float().reshape(1))[0])
        losses.update(part_norms)
        diagnostics = getattr(self.task, "step_diagnostics", dict)()
        losses.update({f"diag/{key}": value for key, value in diagnostics.items()})
        return losses

    def _part_grad_norms(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """"grad/<part>" -> L2 norm of that loss part's gradient over the trained parameters (how hard each term
        pulls, e.g. a KD term against the classification loss). Skipped under DDP (its reducer owns backward)."""
        if not self.cfg.log_grad_norms or self.ctx.distributed:
            return {}
        return part_grad_norms(parts, [p for p in self.task.parameters() if p.requires_grad])

    def _stop_requested(self) -> bool:
        limit = self.cfg.max_iterations
        local = self.stop.requested or (limit > 0 and self.state.global_step >= limit)
        if not self.ctx.distributed:
            return local
        flag = torch.tensor([1.0 if local else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        start_time = time.perf_counter()
        self._session = (start_time, self.state.train_seconds)
        cfg = self.cfg
        self.stop.install()
        self.task.train()
        last_ckpt: Path | None = None
        status = "finished"
        if self.ctx.is_main:
            where = "resuming at" if self._resume_rng is not None else "starting at"
            self.log.info(f"training {cfg.name}: {len(self.train_set)} frames, {self.iters_per_epoch} iterations/epoch "
                          f"x {cfg.epochs} epochs, batch {cfg.batch_size} x {self.ctx.world_size} process(es) on "
                          f"{self.device}{' with AMP' if self.use_amp else ''}; {where} epoch {self.state.epoch} "
                          f"iteration {self.state.iteration}; run folder {self.run_dir.root}")
        try:
            while self.state.epoch < cfg.epochs:
                if self._stop_requested():
                    status = "interrupted"
                    break
                stopped = self._train_epoch()
                if stopped:
                    status = "interrupted"
                    break
                last_ckpt = self._end_of_epoch() or last_ckpt
            if status == "interrupted":
                last_ckpt = self.save_checkpoint()
                if self.ctx.is_main:
                    why = self.stop.reason or f"max_iterations={cfg.max_iterations} reached"
                    self.log.warning(f"stopped ({why}) at epoch {self.state.epoch} iteration {self.state.iteration} "
                                     f"(step {self.state.global_step}); checkpoint {last_ckpt}\n"
                                     f"resume with: python training/train.py --resume {self.run_dir.root}")
            elif self.ctx.is_main:
                best = f", best {METRIC_NAME} {self.state.best_metric:.2f}" if self.state.best_metric >= 0 else ""
                self.log.info(f"finished {cfg.epochs} epochs ({self.state.global_step} steps) in "
                              f"{time.perf_counter() - start_time:.1f} s{best}; checkpoints in "
                              f"{self.run_dir.checkpoints}")
        finally:
            self.stop.uninstall()
            self.run_dir.flush()
        return FitResult(status, self.state.epoch, self.state.iteration, self.state.global_step,
                         self.state.best_metric, dict(self.state.metrics), last_ckpt,
                         time.perf_counter() - start_time)

    def _train_epoch(self) -> bool:
        """Run the (rest of the) current epoch. Returns True when a stop was requested."""
        cfg, state = self.cfg, self.state
        epoch, first = state.epoch, state.iteration
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(first * cfg.batch_size)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        if self._resume_rng is not None and first == 0:
            ckpt_io.restore_rng_state(self._resume_rng)
            self._resume_rng = None
        iterator = iter(self.train_loader)
        if self._resume_rng is not None:  # captured mid-epoch, after this epoch's loader iterator was made
            ckpt_io.restore_rng_state(self._resume_rng)
            self._resume_rng = None
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.iters_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: gradient norms are not on every logged row
        since = 0
        self._epoch_has_grad_norms = False
        tic = time.perf_counter()
        try:
            for batch in iterator:
                lr = self.scheduler.get_last_lr()[0]
                beta1 = self.optimizer.param_groups[0]["betas"][0]
                losses = self.train_step(batch)
                state.iteration += 1
                state.global_step += 1
                since += 1
                if losses is not None:
                    toc = time.perf_counter()
                    self._log_iteration(epoch, lr, beta1, losses, (toc - tic) / since)
                    since = 0
                    for key, value in losses.items():
                        sums[key] = sums.get(key, 0.0) + value
                        counts[key] = counts.get(key, 0) + 1
                    tic = toc
                    if bar is not None:
                        bar.set_postfix(loss=f"{losses['total']:.3f}", lr=f"{lr:.2e}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if state.iteration < self.iters_per_epoch and self._stop_requested():
                    return True
        finally:
            if bar is not None:
                bar.close()
            del iterator
        self._epoch_means = {k: v / counts[k] for k, v in sums.items()}
        return False

    def _log_iteration(self, epoch: int, lr: float, beta1: float, losses: dict[str, float],
                       seconds_per_it: float) -> None:
        if not self.ctx.is_main:
            return
        step = self.state.global_step
        self.run_dir.log_iteration({"epoch": epoch, "iteration": self.state.iteration, "step": step, "lr": lr,
                                    "beta1": beta1, **losses, "s_per_it": seconds_per_it})
        self.run_dir.scalars({f"loss/{k}": v for k, v in losses.items()}, step)
        self.run_dir.scalars({"lr": lr, "beta1": beta1}, step, prefix="optim/")

    def _end_of_epoch(self) -> Path | None:
        cfg, state = self.cfg, self.state
        finished_epoch = state.epoch
        state.epoch += 1
        state.iteration = 0
        is_last = state.epoch == cfg.epochs
        metrics: dict[str, float] = {}
        improved = False
        if self.val_set is not None and cfg.eval_interval and (state.epoch % cfg.eval_interval == 0 or is_last):
            if self.ctx.is_main:
                metrics = self.evaluate()
                state.metrics = metrics
                value = metrics.get(METRIC_NAME, -1.0)
                improved = value > state.best_metric
                if improved:
                    state.best_metric = value
            self.ctx.barrier()
        if self.ctx.is_main:
            # the epoch's row before its checkpoint: a kill between the two then repeats the epoch (and its row,
            # which readers take last per epoch) instead of resuming past an epoch whose row was never written
            means = getattr(self, "_epoch_means", {})
            row = {"epoch": finished_epoch, "step": state.global_step, "lr": self.scheduler.get_last_lr()[0],
                   **{f"loss_{k}": v for k, v in means.items()}, **metrics}
            self.run_dir.log_epoch(row)
            self.run_dir.scalars(metrics, state.global_step, prefix="eval/")
        saved = None
        due = cfg.checkpoint_interval and (state.epoch % cfg.checkpoint_interval == 0 or is_last)
        if due or improved:
            saved = self.save_checkpoint(epoch_file=bool(due), best=improved)
        if self.ctx.is_main:
            shown = f", {METRIC_NAME} {metrics[METRIC_NAME]:.2f}" if METRIC_NAME in metrics else ""
            self.log.info(f"epoch {finished_epoch + 1}/{cfg.epochs}: loss {means.get('total', float('nan')):.4f}"
                          f"{shown}{' (best)' if improved else ''}")
        return saved

    def evaluate(self) -> dict[str, float]:
        """KITTI AP on the validation set (this process; the caller picks rank 0)."""
        return evaluate_task(self.task, self.val_set, self.cfg, self.device, progress=self.progress)


def _atomic_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target)


__all__ = ["Trainer", "FitResult", "EpochSampler", "StopFlag", "seed_everything", "make_train_loader", "METRIC_NAME",
           "grad_norms_due", "part_grad_norms"]
