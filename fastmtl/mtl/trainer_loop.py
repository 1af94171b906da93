"""The loop around :meth:`fastmtl.mtl.MTLTrainer.step`: batches drawn from the trainer's own
generator (so a resumed run draws the same ones), epochs closed for the weightings that keep
epoch statistics (DWA), a progress bar, the per-step task weights and losses kept on the device
(read back only at the logging interval), TensorBoard scalars when tensorboard is installed, a PNG
of the weights over time, and checkpoints that resume identically.

A checkpoint holds only tensors, numbers and containers of them, so it loads with
``torch.load(weights_only=True)``: the model, optimizer, weighting (its learned parameters and
its statistics), GradScaler and scheduler states, the position in the current epoch's order and
the generators' states.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from fastmtl.mtl import distributed as ddp


class TrainingLoop:
    """Mixed into :class:`fastmtl.mtl.MTLTrainer` (which defines ``step`` and the attributes used here)."""

    def __init__(self, seed: int) -> None:
        self.data_gen = torch.Generator().manual_seed(seed)
        self.scheduler = None
        self.step_count, self.epoch = 0, 0
        self._order: Tensor | None = None
        self._pos = 0
        self._weights_log: list = []
        self._losses_log: list = []
        self.metrics_log: list = []  # {"step": n, task: value, ...} per evaluation during fit

    def record(self, weights: Tensor, losses: Tensor) -> None:
        self._weights_log.append(weights)
        self._losses_log.append(losses)
        self.step_count += 1

    def history(self) -> dict:
        """``{"weights": [steps, T], "losses": [steps, T]}`` on the CPU (one copy for all steps)."""
        t = len(self.tasks)
        empty = torch.empty(0, t)
        w = torch.stack(self._weights_log).float().cpu() if self._weights_log else empty
        losses = torch.stack(self._losses_log).float().cpu() if self._losses_log else empty
        return {"weights": w, "losses": losses, "metrics": list(self.metrics_log)}

    def epoch_end(self) -> None:
        """Closes an epoch: DWA's statistics. ``fit`` calls it at each pass over the data."""
        self.epoch += 1
        if hasattr(self.weighting, "epoch_end"):
            self.weighting.epoch_end()

    def _next_batch(self, n: int, batch_size: int) -> Tensor:
        if self._order is None or self._pos + batch_size > len(self._order):
            if self._order is not None:
                self.epoch_end()
            self._order, self._pos = torch.randperm(n, generator=self.data_gen), 0
        idx = self._order[self._pos : self._pos + batch_size]
        self._pos += batch_size
        return ddp.shard(idx)

    def fit(
        self,
        inputs: Tensor,
        targets: dict,
        steps: int,
        batch_size: int,
        *,
        scheduler=None,
        progress: bool = True,
        log_every: int = 25,
        log_dir: str | None = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 0,
        epoch_callback=None,
        val: tuple | None = None,
        metric_fns: dict | None = None,
        eval_every: int = 0,
    ) -> dict:
        """Trains until ``step_count == steps`` on batches of ``batch_size`` (the global batch: each
        of W data-parallel ranks takes its 1/W) drawn from ``inputs`` ``[N, ...]`` and ``targets``
        ``{task: [N, ...]}``; ``scheduler.step()`` after each step; ``epoch_callback(trainer)``
        after each pass (e.g. DTP's ``update_kpis``); every ``eval_every`` steps, the per-task
        metrics on ``val = (inputs, targets)`` (:meth:`evaluate`) go to ``metrics_log``, the
        progress bar and TensorBoard. Returns :meth:`history`."""
        from tqdm.auto import tqdm

        if not 0 < batch_size <= len(inputs):
            raise ValueError(f"batch_size must be in [1, {len(inputs)}], got {batch_size}")
        if set(targets) != set(self.tasks) or any(len(v) != len(inputs) for v in targets.values()):
            raise ValueError(f"targets must map the tasks {self.tasks} to tensors of {len(inputs)} rows")
        self.scheduler = scheduler if scheduler is not None else self.scheduler
        writer = self._tensorboard(log_dir)
        bar = tqdm(
            total=steps, initial=self.step_count, desc="train", disable=not progress or ddp.rank() != 0
        )
        epoch = self.epoch
        while self.step_count < steps:
            idx = self._next_batch(len(inputs), batch_size)
            if epoch_callback is not None and self.epoch != epoch:
                epoch = self.epoch
                epoch_callback(self)
            out = self.step(
                inputs[idx].to(self.device), {t: v[idx].to(self.device) for t, v in targets.items()}
            )
            if self.scheduler is not None:
                self.scheduler.step()
            bar.update(1)
            if log_every and self.step_count % log_every == 0:
                self._log(out, bar, writer)
            if val is not None and eval_every and self.step_count % eval_every == 0:
                self._log_metrics(self.evaluate(*val, metric_fns), bar, writer)
            if checkpoint and checkpoint_every and self.step_count % checkpoint_every == 0:
                self.save(checkpoint)
        bar.close()
        if writer is not None:
            writer.close()
        return self.history()

    @staticmethod
    def _tensorboard(log_dir: str | None):
        if not log_dir or ddp.rank() != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", stacklevel=3
            )
            return None
        return SummaryWriter(log_dir)

    def _log(self, out: dict, bar, writer) -> None:
        losses, weights = torch.stack((out["losses"], out["weights"].to(out["losses"]))).tolist()  # syncs
        bar.set_postfix({t: f"{v:.3g}" for t, v in zip(self.tasks, losses)})
        if writer is not None:
            writer.add_scalars("loss", dict(zip(self.tasks, losses)), self.step_count)
            writer.add_scalars("weight", dict(zip(self.tasks, weights)), self.step_count)

    @torch.no_grad()
    def evaluate(
        self, inputs: Tensor, targets: dict, metric_fns: dict | None = None, batch_size: int = 64
    ) -> dict:
        """``{task: float}``: ``metric_fns[task](output, target)`` (a scalar mean; default: the task
        losses) over ``inputs`` in eval mode, batch by batch weighted by batch size; one host copy."""
        fns = metric_fns or self.loss_fns
        if not set(fns) <= set(self.tasks) or not set(fns) <= set(targets):
            raise ValueError(
                f"metric_fns must name tasks of {self.tasks} that targets has, got {sorted(fns)}"
            )
        training = self.module.training
        self.module.eval()
        total = None
        for i in range(0, len(inputs), batch_size):
            x = inputs[i : i + batch_size].to(self.device)
            with self._autocast():
                out = self.module(x)
            values = [fns[t](out[t], targets[t][i : i + batch_size].to(self.device)).double() for t in fns]
            total = torch.stack(values) * len(x) + (0 if total is None else total)
        self.module.train(training)
        return dict(zip(fns, (total / len(inputs)).tolist()))

    def _log_metrics(self, metrics: dict, bar, writer) -> None:
        self.metrics_log.append({"step": self.step_count, **metrics})
        bar.set_postfix({f"val {t}": f"{v:.3g}" for t, v in metrics.items()})
        if writer is not None:
            writer.add_scalars("val", metrics, self.step_count)

    def plot_weights(self, path) -> Path:
        """A PNG of each task's weight over the steps."""
        from fastmtl.pipelines._figures import pyplot, save_figure

        w = self.history()["weights"]
        fig, ax = pyplot().subplots(figsize=(6, 3.5))
        for i, t in enumerate(self.tasks):
            ax.plot(range(1, len(w) + 1), w[:, i].numpy(), label=t)
        ax.set(xlabel="step", ylabel="task weight", title=type(self.weighting).__name__)
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, path)

    def state_dict(self) -> dict:
        history = self.history()
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "loop": {
                "step": self.step_count,
                "epoch": self.epoch,
                "order": self._order,
                "pos": self._pos,
                "data_rng": self.data_gen.get_state(),
                "order_rng": self.order_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "weights": history["weights"],
                "losses": history["losses"],
                "metrics": list(self.metrics_log),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        self.scaler.load_state_dict(state["scaler"])
        if state["scheduler"] is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        loop = state["loop"]
        self.step_count, self.epoch, self._pos = loop["step"], loop["epoch"], loop["pos"]
        self._order = None if loop["order"] is None else loop["order"].cpu()
        self.data_gen.set_state(loop["data_rng"].cpu())
        self.order_gen.set_state(loop["order_rng"].cpu())
        torch.set_rng_state(loop["torch_rng"].cpu())
        self._weights_log = list(loop["weights"].to(self.device).unbind(0))
        self._losses_log = list(loop["losses"].to(self.device).unbind(0))
        self.metrics_log = list(loop["metrics"])

    def save(self, path) -> None:
        """Writes a checkpoint (rank 0 only; written to a temporary file, then renamed)."""
        if ddp.rank() == 0:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        if ddp.active():
            torch.distributed.barrier()

    def load(self, path) -> None:
        """Resumes from a checkpoint written by :meth:`save` (loaded with ``weights_only=True``)."""
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
