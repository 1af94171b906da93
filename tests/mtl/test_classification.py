"""Multi-output classification and the U-Net + image-label model, each with two encoders: shapes on
odd input sizes, gradients reach every parameter, heads equal a hand computation, the
representation split, and bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmtl.models.segmentation import UNet
from fastmtl.models.segmentation.unet_classifier import UNetClassifier
from fastmtl.mtl import representation_backward
from fastmtl.mtl.classification import MultiOutputClassifier

LABELS = {"kind": 5, "colour": 3}


def _small_encoder():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1)
    )


def _mobilenet_encoder():
    from torchvision.models import mobilenet_v2

    return mobilenet_v2().features  # 1280 channels at stride 32


@pytest.mark.parametrize("encoder, channels", [(_small_encoder, 12), (_mobilenet_encoder, 1280)])
def test_multi_output_with_two_encoders(encoder, channels, gen):
    net = MultiOutputClassifier(encoder(), LABELS, dropout=0.2)  # channels found by a dry forward
    assert net.in_features == channels
    x = torch.randn(2, 3, 33, 29, generator=gen)  # odd sizes
    out = net(x)
    assert out["kind"].shape == (2, 5) and out["colour"].shape == (2, 3)
    (out["kind"].square().mean() + out["colour"].square().mean()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_multi_output_heads_by_hand_and_the_split(pool, gen):
    net = MultiOutputClassifier(_small_encoder(), LABELS, in_features=12, pool=pool).eval()
    x = torch.randn(2, 3, 15, 9, generator=gen)
    fmap = net.encoder(x)
    z = fmap.mean((2, 3)) if pool == "avg" else fmap.amax((2, 3))
    out = net(x)
    for label, head in net.heads.items():
        torch.testing.assert_close(out[label], F.linear(z, head[1].weight, head[1].bias))
    net.train()
    outputs, z, zd = net(x, representation=True)  # heads on zd, a leaf copy of z
    assert zd.is_leaf and z.shape == (2, 12)
    losses = {k: v.square().mean() for k, v in outputs.items()}
    representation_backward(losses, z, zd, "pcgrad", generator=gen)
    assert all(p.grad is not None for p in net.parameters())
    assert {id(p) for p in net.shared_parameters()} == {id(p) for p in net.encoder.parameters()}


def test_multi_output_takes_vector_encoders_and_a_sample(gen):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    net = MultiOutputClassifier(encoder, {"a": 2}, sample=torch.zeros(1, 1, 8, 8))
    assert net.in_features == 7
    assert net(torch.randn(3, 1, 8, 8, generator=gen))["a"].shape == (3, 2)
    with pytest.raises(ValueError, match="encoder"):
        MultiOutputClassifier(encoder, {"a": 2}, in_features=5)(torch.randn(3, 1, 8, 8, generator=gen))


def test_multi_output_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        MultiOutputClassifier(_small_encoder(), {})
    with pytest.raises(ValueError, match="num_classes"):
        MultiOutputClassifier(_small_encoder(), {"kind": 0}, in_features=12)
    with pytest.raises(ValueError, match="pool"):
        MultiOutputClassifier(_small_encoder(), LABELS, in_features=12, pool="sum")
    with pytest.raises(ValueError, match="dropout"):
        MultiOutputClassifier(_small_encoder(), LABELS, in_features=12, dropout=1.0)
    with pytest.raises(ValueError, match="in_features"):
        MultiOutputClassifier(_small_encoder(), LABELS, in_features=0)


@pytest.mark.parametrize(
    "unet, size",
    [
        (lambda: UNet(1, 3, depth=2, width=4), (1, 33, 27)),  # odd sizes
        (lambda: UNet(3, 3, encoder="mobilenet_v2", upsample="bilinear", pretrained=False), (3, 32, 32)),
    ],
)
def test_unet_classifier_with_two_encoders(unet, size, gen):
    net = UNetClassifier(unet(), 2, dropout=0.1)
    x = torch.rand(2, *size, generator=gen)
    out = net(x)
    assert out["seg"].shape == (2, 3, *size[1:]) and out["label"].shape == (2, 2)
    (out["seg"].square().mean() + out["label"].square().mean()).backward()
    for name, p in net.named_parameters():
        # MobileNet's BN biases right before another batch-normed layer get an exact 0
        assert p.grad is not None and (p.grad.abs().sum() > 0 or "encoder" in name), name


def test_unet_classifier_equals_its_unet_and_a_hand_head(gen):
    net = UNetClassifier(UNet(1, 2, depth=2, width=4, upsample="unpool"), 4).eval()
    x = torch.rand(2, 1, 17, 20, generator=gen)
    out = net(x)
    torch.testing.assert_close(out["seg"], net.unet(x))
    bottleneck = net.unet.encoder(x)[0][-1].mean((2, 3))
    linear = net.classifier[1]
    torch.testing.assert_close(out["label"], bottleneck @ linear.weight.T + linear.bias)


def test_unet_classifier_bad_arguments(gen):
    with pytest.raises(ValueError, match="unet"):
        UNetClassifier(nn.Conv2d(1, 2, 1), 2)
    with pytest.raises(ValueError, match="num_labels"):
        UNetClassifier(UNet(1, 2, depth=1, width=2), 0)
    with pytest.raises(ValueError, match="dropout"):
        UNetClassifier(UNet(1, 2, depth=1, width=2), 2, dropout=-0.1)
    with pytest.raises(ValueError, match="images"):
        UNetClassifier(UNet(1, 2, depth=1, width=2), 2)(torch.rand(1, 8, 8, generator=gen))
