"""Style and content losses as modules, each holding its fixed target (see fastmtl.ops.style)."""

import torch
from torch import Tensor, nn

from fastmtl.ops._checks import InputError, check_reduction
from fastmtl.ops.gram import check_features, gram_matrix
from fastmtl.ops.style import _check_normalization, content_loss, style_loss

__all__ = ["ContentLoss", "StyleLoss"]


class StyleLoss(nn.Module):
    """Style loss of one layer against the Gram matrix of ``target_features``, computed once.

    Args:
        target_features: style-image features ``[C, H, W]`` or ``[N, C, H, W]``. Their Gram
            matrix (unnormalized for ``"gatys"``, normalized for ``"mse"``) is kept as the buffer
            ``target_gram``, ``[C, C]`` for one image (applied to every sample of the input),
            else ``[N, C, C]``. Kept in float32 for half features.
        normalization: ``"gatys"`` (the lecture's ``J_style``) or ``"mse"`` (PyTorch tutorial).
        reduction: over the batch, ``"mean"``, ``"sum"`` or ``"none"``.
    """

    target_gram: Tensor

    def __init__(
        self, target_features: Tensor, *, normalization: str = "gatys", reduction: str = "mean"
    ) -> None:
        super().__init__()
        _check_normalization(normalization)
        check_reduction(reduction)
        if isinstance(target_features, Tensor) and target_features.dim() == 3:
            target_features = target_features[None]
        target_features = check_features("target_features", target_features)
        with torch.no_grad():
            # The Gram matrix in float32 for half features: it is the target, once for the whole run.
            f = target_features.detach()
            if f.dtype in (torch.float16, torch.bfloat16):
                f = f.float()
            gram = gram_matrix(f, normalize=normalization == "mse")
        self.register_buffer("target_gram", gram[0] if gram.shape[0] == 1 else gram)
        self.normalization = normalization
        self.reduction = reduction

    def forward(self, features: Tensor) -> Tensor:
        """features: ``[N, C, H, W]`` of the generated image(s)."""
        target = self.target_gram
        if features.dtype in (torch.float32, torch.float64) and target.dtype != features.dtype:
            target = target.to(features.dtype)
        return style_loss(features, target, normalization=self.normalization, reduction=self.reduction)

    def extra_repr(self) -> str:
        c = self.target_gram.shape[-1]
        return f"channels={c}, normalization={self.normalization!r}, reduction={self.reduction!r}"


class ContentLoss(nn.Module):
    """Content loss against a fixed ``target`` (kept detached as the buffer ``target``).

    ``"gatys"``: ``1/2 ||a_C - a_G||^2`` per sample; ``"mse"``: mean of squares.
    """

    target: Tensor

    def __init__(self, target: Tensor, *, normalization: str = "gatys", reduction: str = "mean") -> None:
        super().__init__()
        _check_normalization(normalization)
        check_reduction(reduction)
        if not isinstance(target, Tensor) or not target.is_floating_point():
            raise InputError(f"target must be a floating-point tensor, got {target!r:.80}")
        self.register_buffer("target", target.detach().clone())
        self.normalization = normalization
        self.reduction = reduction

    def forward(self, features: Tensor) -> Tensor:
        """features: ``[N, ...]`` with the target's shape, or the target's shape with a batch dimension."""
        return content_loss(features, self.target, normalization=self.normalization, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"normalization={self.normalization!r}, reduction={self.reduction!r}"
