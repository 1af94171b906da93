"""One training step for any multi-task model and any task-balancing strategy.

``MTLTrainer(model, loss_fns, weighting, optimizer, gradient=..., space=...)``:

- ``model(x)`` returns ``{task: output}``; ``loss_fns[task](output, target)`` a scalar loss.
- ``weighting``: a :class:`fastmtl.mtl.Weighting` (fixed, uncertainty, DWA, DTP, GradNorm, FAMO).
- ``gradient``: ``"none"``, or ``"pcgrad"`` / ``"mgda"`` applied to the weighted per-task gradients.
- ``space``: where per-task gradients are taken, when they are needed (PCGrad, MGDA, GradNorm):
  ``"representation"`` (at the shared representation ``z``, through the heads only; the encoder is
  backpropagated once) or ``"parameters"`` (over the shared parameters, the papers' exact form: the
  encoder is backpropagated once per task). Both need a model like
  :class:`fastmtl.mtl.HardSharing`: ``model(x, representation=True)`` returns ``(outputs, z, zd)``
  with the heads run on ``zd``, a detached leaf copy of ``z``; "parameters" also needs
  ``model.shared_parameters()``.

Task-specific parameters (the heads) get the gradient of the weighted loss; the shared ones get
the balanced combination ``sum_t c_t g_t`` of the per-task gradients, with ``c`` the weighting's
weights, or PCGrad's / MGDA's coefficients of the weighted gradients, computed from their Gram
matrix alone (:func:`fastmtl.mtl.combination_weights`). Nothing is copied to the host.

Mixed precision (``amp=True``): bf16 autocast on the CPU, fp16 autocast with a GradScaler on CUDA.
The per-task gradients are taken of the scaled losses: PCGrad's and MGDA's coefficients are
invariant to the scale, GradNorm's norms are divided by it, and a step whose gradients overflow is
skipped by the scaler (and leaves GradNorm's weights unchanged).

Data parallel: inside ``torch.distributed`` (e.g. under ``torchrun``) the model is wrapped in
DistributedDataParallel, which averages the gradients of the parameters; the trainer adds one
all-reduce of the ``[T]`` loss values and, for PCGrad / MGDA / GradNorm, of the ``[T, T]`` Gram
matrix (or of the ``[T, P]`` per-task gradients in parameter space) so that every rank computes the
same weights as one process would on the whole batch (:mod:`fastmtl.mtl.distributed`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastmtl.amp import autocast
from fastmtl.mtl import distributed as ddp
from fastmtl.mtl.backward import representation_grads
from fastmtl.mtl.gradients import combination_weights, gram_matrix
from fastmtl.mtl.trainer_loop import TrainingLoop
from fastmtl.mtl.weighting import FAMO, GradNorm, Weighting

GRADIENTS = ("none", "pcgrad", "mgda")
SPACES = ("representation", "parameters")


def _at_least_float32(loss: Tensor) -> Tensor:
    return loss if loss.dtype == torch.float64 else loss.float()


class MTLTrainer(TrainingLoop):
    """See the module docstring. ``step(x, targets)`` runs one optimizer step; ``fit(...)``
    (:class:`fastmtl.mtl.trainer_loop.TrainingLoop`) loops over a dataset with a progress bar,
    logging and checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        loss_fns: dict,
        weighting: Weighting,
        optimizer: torch.optim.Optimizer,
        *,
        gradient: str = "none",
        space: str = "representation",
        amp: bool = False,
        gradnorm_params: list | None = None,
        seed: int = 0,
        ddp_kwargs: dict | None = None,
    ) -> None:
        if not isinstance(weighting, Weighting):
            raise ValueError(f"weighting must be a fastmtl.mtl.Weighting, got {type(weighting).__name__}")
        if set(loss_fns) != set(weighting.tasks):
            raise ValueError(
                f"loss_fns must have the weighting's tasks {weighting.tasks}, got {sorted(loss_fns)}"
            )
        if gradient not in GRADIENTS or space not in SPACES:
            raise ValueError(f"gradient must be one of {GRADIENTS} and space one of {SPACES}")
        self.module, self.loss_fns, self.weighting, self.optimizer = model, loss_fns, weighting, optimizer
        self.tasks, self.gradient, self.space = weighting.tasks, gradient, space
        self.needs_grads = gradient != "none" or isinstance(weighting, GradNorm)
        self.device = next(model.parameters()).device
        self.weighting.to(self.device)
        self.shared = self._shared_parameters(model) if self.needs_grads and space == "parameters" else []
        self.gradnorm_params = list(gradnorm_params or [])
        self.net = self._wrap(model, ddp_kwargs)
        self.amp = amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.device.type == "cuda")
        self.order_gen = torch.Generator().manual_seed(seed)  # PCGrad's task order: same on every rank
        super().__init__(seed)

    @staticmethod
    def _shared_parameters(model: nn.Module) -> list:
        if not hasattr(model, "shared_parameters"):
            raise ValueError('space="parameters" needs model.shared_parameters() (as HardSharing has)')
        return list(model.shared_parameters())

    def _wrap(self, model: nn.Module, ddp_kwargs: dict | None) -> nn.Module:
        if not ddp.active():
            return model
        from torch.nn.parallel import DistributedDataParallel

        kwargs = dict(ddp_kwargs or {})
        if self.device.type == "cuda":
            kwargs.setdefault("device_ids", [self.device.index])
        return DistributedDataParallel(model, **kwargs)

    def _autocast(self):
        return autocast(self.device, self.amp)

    def losses(self, x: Tensor, targets: dict, representation: bool = False) -> tuple:
        """``({task: float32 (or float64) loss}, z, zd)``: the model's losses on ``x`` (z and zd with
        ``representation``, else None), their values averaged over ranks."""
        with self._autocast():
            if representation:
                outputs, z, zd = self.net(x, representation=True)
            else:
                outputs, z, zd = self.net(x), None, None
            losses = {t: _at_least_float32(self.loss_fns[t](outputs[t], targets[t])) for t in self.tasks}
        return ddp.global_losses(losses), z, zd

    def step(self, x: Tensor, targets: dict) -> dict:
        """One optimizer step on a batch; returns ``{"loss", "losses" [T], "weights" [T],
        "shared_weights" [T]}``, detached, on the device (reading them syncs; the trainer itself
        never does). ``weights``: the weighting's, applied to the heads' losses;
        ``shared_weights``: the coefficients of the per-task gradients in the shared parameters'
        gradient (PCGrad's or MGDA's under ``gradient``, else the same). The history logs the
        latter."""
        self.module.train()
        losses, z, zd = self.losses(x, targets, representation=self.needs_grads)
        total = self.weighting(losses)
        weights = self.weighting.weights.clone()  # GradNorm updates its weights in place below
        self.optimizer.zero_grad(set_to_none=True)
        if self.needs_grads:
            shared_weights = self._balanced_backward(losses, total, z, zd)
        else:
            self.scaler.scale(total).backward()
            shared_weights = weights
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if isinstance(self.weighting, FAMO):  # FAMO steps its logits on the change of the losses
            self.weighting.update(self._losses_again(x, targets))
        stacked = torch.stack([losses[t].detach() for t in self.tasks])
        self.record(shared_weights, stacked)
        return {
            "loss": total.detach(),
            "losses": stacked,
            "weights": weights,
            "shared_weights": shared_weights,
        }

    @torch.no_grad()
    def _losses_again(self, x: Tensor, targets: dict) -> dict:
        """The losses after the step on the same batch, leaving the buffers (BatchNorm's running
        statistics) as the step left them: this second forward is a measurement, not training."""
        buffers = [(b, b.clone()) for b in self.module.buffers()]
        losses = self.losses(x, targets)[0]
        for b, saved in buffers:
            b.copy_(saved)
        return losses

    def _scale(self, like: Tensor) -> Tensor:
        """The GradScaler's current scale as a device tensor (1 without one): no sync."""
        return self.scaler.scale(torch.ones((), device=like.device))

    def _balanced_backward(self, losses: dict, total: Tensor, z: Tensor, zd: Tensor) -> Tensor:
        scale = self._scale(z)
        gz = representation_grads([losses[t] * scale for t in self.tasks], zd)  # of the scaled losses
        grads, gram = self._task_grads(z, gz)
        w = self.weighting.weights.to(gram)
        if isinstance(self.weighting, GradNorm):
            self._gradnorm_step(losses, z, gz, gram, scale)
        if self.gradient == "none":
            coef = w
        else:
            coef = combination_weights(gram * w[:, None] * w[None, :], self.gradient, self.order_gen) * w
        self.scaler.scale(total).backward()  # the heads' (weighted) gradients; zd's is thrown away
        if grads is not None and not ddp.active():
            self._set_shared_grads(coef.to(grads) @ grads)
        else:  # DDP averages sum_t c_t J_k^T g_t,k over the ranks k: c @ the global per-task gradients
            z.backward((coef.to(gz) @ gz).view_as(z))
        return coef.detach()

    def _task_grads(self, z: Tensor, gz: Tensor) -> tuple:
        """``(parameter-space gradients [T, P] or None, their global Gram matrix [T, T])``."""
        if self.space == "representation":
            return None, ddp.representation_gram(gz)
        rows = [self._flat_grad(z, g.view_as(z), self.shared) for g in gz]
        grads = ddp.mean(torch.stack(rows))
        return grads, gram_matrix(grads).double()

    @staticmethod
    def _flat_grad(z: Tensor, grad_z: Tensor, params: list) -> Tensor:
        grads = torch.autograd.grad(z, params, grad_z, retain_graph=True, allow_unused=True)
        flat = [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)]
        return _at_least_float32(torch.cat(flat))

    def _set_shared_grads(self, flat: Tensor) -> None:
        offset = 0
        for p in self.shared:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def _gradnorm_step(self, losses: dict, z: Tensor, gz: Tensor, gram: Tensor, scale: Tensor) -> None:
        """GradNorm's weight update from the unweighted per-task gradient norms: at
        ``gradnorm_params`` (the paper's last shared layer) when given, else where ``space`` says."""
        if self.gradnorm_params:
            rows = ddp.mean(torch.stack([self._flat_grad(z, g.view_as(z), self.gradnorm_params) for g in gz]))
            norms = rows.norm(dim=1)
        else:
            norms = gram.diagonal().clamp(min=0).sqrt()
        norms = norms / scale.to(norms)
        before = self.weighting.w.detach().clone()
        self.weighting.step(norms, losses)
        with torch.no_grad():  # an overflowed fp16 step (skipped by the scaler) leaves w as it was
            self.weighting.w.copy_(torch.where(norms.isfinite().all(), self.weighting.w, before))
