"""U-Net (Ronneberger et al., 2015): an encoder, a decoder that upsamples and concatenates the
encoder's feature map of the same resolution (the skip connection), then two convolutions, and a
1x1 convolution to per-pixel class logits.

Upsampling (``upsample``), as in the slides (seeds/004):
- ``"transpose"``: a 2x2 transposed convolution with stride 2 (an "up-convolution": each input
  value scales the filter into its own 2x2 block of the output);
- ``"bilinear"``: bilinear interpolation, then a 1x1 convolution to the skip's width;
- ``"unpool"``: max-unpooling with the encoder's pooling indices (SegNet): each value goes back
  to where its pool's maximum was, the rest is 0; then the convolutions fill it in.

Any input size works: the transposed convolution's output is zero-padded to the skip's size where
pooling dropped an odd row or column; bilinear and unpooling produce the skip's size directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.models.segmentation.encoders import MobileNetV2Encoder, SmallEncoder, double_conv

UPSAMPLING = ("transpose", "bilinear", "unpool")
ENCODERS = ("small", "mobilenet_v2")


class _Up(nn.Module):
    """One decoder step: upsample ``x`` to the skip's size and width, concatenate, two convs."""

    def __init__(self, cin: int, cskip: int, cout: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        else:
            self.up = nn.Conv2d(cin, cskip, 1)
        self.conv = double_conv(2 * cskip, cout)

    def forward(self, x: Tensor, skip: Tensor, indices) -> Tensor:
        size = skip.shape[-2:]
        if self.mode == "transpose":
            x = self.up(x)
            x = F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))
        elif self.mode == "bilinear":
            x = self.up(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        else:
            x = F.max_unpool2d(self.up(x), indices, 2, 2, output_size=size)
        return self.conv(torch.cat((skip, x), 1))


class UNet(nn.Module):
    """``UNet(in_channels, num_classes, depth=4, width=32, upsample="transpose")(images)`` ->
    logits ``[N, num_classes, H, W]`` for images ``[N, in_channels, H, W]`` of any size.

    ``encoder="mobilenet_v2"`` uses ImageNet MobileNetV2 (RGB in [0, 1]; ``pretrained`` loads its
    weights, ``freeze_encoder`` keeps them fixed; see :meth:`param_groups` for a lower learning rate
    instead); its finest feature map is at stride 2, so the last step is a bilinear upsampling.
    ``features(images)`` gives the decoder's last feature map, for extra heads.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 32,
        upsample: str = "transpose",
        encoder: str = "small",
        pretrained: bool = True,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if encoder == "small":
            self.encoder = SmallEncoder(in_channels, width, depth)
        else:
            if upsample == "unpool":
                raise ValueError("upsample='unpool' needs pooling indices: the small encoder only")
            if in_channels != 3:
                raise ValueError(f"the MobileNetV2 encoder takes 3 input channels, got {in_channels}")
            self.encoder = MobileNetV2Encoder(pretrained)
        self.encoder.requires_grad_(not freeze_encoder)
        chans = self.encoder.channels
        self.ups = nn.ModuleList(
            _Up(chans[i + 1], chans[i], chans[i], upsample) for i in reversed(range(len(chans) - 1))
        )
        self.out_channels = chans[0]
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def encode(self, images: Tensor) -> tuple:
        """The encoder's ``(feature maps, finest first and the bottleneck last; pooling indices)``."""
        if images.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {list(images.shape)}")
        return self.encoder(images)

    def decode(self, encoded: tuple, size) -> Tensor:
        """The decoder's feature map ``[N, out_channels, *size]`` from :meth:`encode`'s output."""
        feats, indices = encoded
        x = feats[-1]
        for up, skip, where in zip(self.ups, reversed(feats[:-1]), reversed(indices)):
            x = up(x, skip, where)
        if x.shape[-2:] != tuple(size):  # an encoder whose finest map is not full size
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x

    def features(self, images: Tensor) -> Tensor:
        """The decoder's full-resolution feature map ``[N, out_channels, H, W]``."""
        return self.decode(self.encode(images), images.shape[-2:])

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def param_groups(self, lr: float, encoder_lr_mult: float = 0.1) -> list:
        """Optimizer parameter groups: the encoder at ``lr * encoder_lr_mult`` (fine-tuning a
        pretrained encoder gently), the rest at ``lr``; frozen parameters left out."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        rest = [p for n, p in self.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
        groups = [{"params": rest, "lr": lr}]
        return groups + ([{"params": enc, "lr": lr * encoder_lr_mult}] if enc else [])
