"""A U-Net that also classifies the whole image: the slides' medical-imaging example (seeds/004), a
lesion mask and a benign/malignant label from one network. U-Net: Ronneberger, Fischer and Brox,
"U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015; the image label
comes from the encoder's bottleneck (the coarsest, most semantic map), globally average-pooled,
through dropout and a linear layer: hard parameter sharing of the encoder between the two tasks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.models.segmentation.unet import UNet

__all__ = ["UNetClassifier"]


class UNetClassifier(nn.Module):
    """``UNetClassifier(unet, num_labels, dropout=0.0)(images)`` ->
    ``{"seg": [N, num_classes, H, W], "label": [N, num_labels]}`` for images of any size.

    ``unet`` is a :class:`fastmtl.models.segmentation.UNet` (any encoder and upsampling);
    ``"seg"`` is exactly ``unet(images)`` and ``"label"`` the logits of the image-level head on its
    bottleneck (one encoder pass for both).
    """

    def __init__(self, unet: UNet, num_labels: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(unet, UNet):
            raise ValueError(f"unet must be a fastmtl UNet, got {type(unet).__name__}")
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.unet = unet
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(unet.encoder.channels[-1], num_labels))

    def forward(self, images: Tensor) -> dict:
        encoded = self.unet.encode(images)
        label = self.classifier(F.adaptive_avg_pool2d(encoded[0][-1], 1).flatten(1))
        return {"seg": self.unet.head(self.unet.decode(encoded, images.shape[-2:])), "label": label}
