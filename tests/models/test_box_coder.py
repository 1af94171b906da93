"""The Faster R-CNN box coder: round trip, torchvision's BoxCoder, clamping, class-specific deltas."""

import math

import pytest
import torch

from fastmtl.models.detection.box_coder import BBOX_XFORM_CLIP, BoxCoder, decode_boxes, encode_boxes
from tests.utils import assert_close, random_boxes

_utils = pytest.importorskip("torchvision.models.detection._utils")

WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (2.0, 3.0, 0.5, 7.0)]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_round_trip_float64(gen, weights):
    boxes, reference = (
        random_boxes(500, gen=gen, dtype=torch.float64),
        random_boxes(500, gen=gen, dtype=torch.float64),
    )
    deltas = encode_boxes(boxes, reference, weights=weights)
    assert deltas.shape == (500, 4) and deltas.dtype == torch.float64
    assert_close(decode_boxes(deltas, reference, weights=weights), boxes, rtol=1e-12, atol=1e-10)
    # and the other way round, for deltas whose sizes stay well under the clamp
    deltas = 0.5 * torch.randn(500, 4, generator=gen, dtype=torch.float64) * torch.tensor(weights)
    assert_close(
        encode_boxes(decode_boxes(deltas, reference, weights=weights), reference, weights=weights),
        deltas,
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torchvision(gen, weights, dtype):
    tv = _utils.BoxCoder(weights)
    boxes, reference = random_boxes(300, gen=gen, dtype=dtype), random_boxes(300, gen=gen, dtype=dtype)
    tol = {"rtol": 1e-12, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    assert_close(encode_boxes(boxes, reference, weights=weights), tv.encode_single(boxes, reference), **tol)
    deltas = 3 * torch.randn(300, 4, generator=gen, dtype=dtype)  # some beyond the clamp
    assert_close(decode_boxes(deltas, reference, weights=weights), tv.decode_single(deltas, reference), **tol)


def test_class_specific_deltas_match_torchvision(gen):
    reference = random_boxes(50, gen=gen, dtype=torch.float64)
    deltas = torch.randn(50, 4 * 5, generator=gen, dtype=torch.float64)
    out = BoxCoder().decode(deltas, reference)
    assert out.shape == (50, 20)
    assert_close(
        out, _utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(deltas, reference), rtol=1e-12, atol=1e-10
    )
    per_class = out.view(50, 5, 4)
    for c in range(5):
        assert_close(per_class[:, c], decode_boxes(deltas[:, 4 * c : 4 * c + 4], reference), rtol=0, atol=0)


def test_clamp_of_width_and_height():
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float64)
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]], dtype=torch.float64)  # dw / 5 = 2000 >> log(1000/16)
    out = decode_boxes(huge, reference)
    assert torch.isfinite(out).all()
    assert out[0, 2] - out[0, 0] == pytest.approx(1000.0) and out[0, 3] - out[0, 1] == pytest.approx(1000.0)
    assert (out[0, :2] + out[0, 2:]).tolist() == pytest.approx([16.0, 16.0])  # centre kept
    just_under = torch.tensor([[0.0, 0.0, 5 * (BBOX_XFORM_CLIP - 0.5), 0.0]], dtype=torch.float64)
    w = decode_boxes(just_under, reference)[0, 2:].sub(decode_boxes(just_under, reference)[0, :2])
    assert w.tolist() == pytest.approx([16 * math.exp(BBOX_XFORM_CLIP - 0.5), 16.0])
    # shrinking is not clamped
    tiny = decode_boxes(torch.tensor([[0.0, 0.0, -50.0, -50.0]], dtype=torch.float64), reference)
    assert 0 < (tiny[0, 2] - tiny[0, 0]).item() < 1e-3


def test_identity_and_translation():
    reference = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert encode_boxes(reference, reference).abs().max() == 0
    shifted = reference + torch.tensor([2.0, 4.0, 2.0, 4.0])  # +0.1 width, +0.1 height
    assert encode_boxes(shifted, reference)[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    doubled = torch.tensor([[0.0, 0.0, 40.0, 80.0]])
    assert encode_boxes(doubled, reference)[0, 2:].tolist() == pytest.approx([5 * math.log(2)] * 2)


def test_broadcasting_and_gradient(gen):
    reference = random_boxes(7, gen=gen, dtype=torch.float64)
    deltas = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    out = decode_boxes(deltas, reference)
    assert out.shape == (3, 7, 4)
    assert torch.autograd.gradcheck(lambda d: decode_boxes(d, reference), (deltas,))
