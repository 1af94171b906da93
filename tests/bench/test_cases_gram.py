"""The style-loss benchmark cases: registered, the five VGG-19 layer shapes, providers agree."""

from fastmtl import bench
from fastmtl.bench import cases_gram
from fastmtl.bench.harness import check_agreement


def test_style_loss_is_registered():
    assert bench.REGISTRY["style_loss"] == "fastmtl.bench.cases_gram"


def test_vgg19_layer_shapes():
    assert cases_gram.layer_shapes(256, 8) == [
        (8, 64, 256, 256),
        (8, 128, 128, 128),
        (8, 256, 64, 64),
        (8, 512, 32, 32),
        (8, 512, 16, 16),
    ]
    full = cases_gram.sizes("cpu", quick=False)["style"]
    assert set(full) == {(256, 1), (256, 8), (512, 1), (512, 8)}
    assert (512, 8) not in cases_gram.sizes("cpu", quick=True)["style"]


def test_small_cases_agree():
    case = cases_gram.style_case(32, 2, "cpu", use_compile=False)
    outputs = check_agreement(case)
    assert list(outputs) == ["fastmtl", "eager"]
    loss, *grads = outputs["fastmtl"]
    assert loss.ndim == 0 and len(grads) == 5 and all(g.abs().max() > 0 for g in grads)
    gram = cases_gram.gram_case(2, 32, 2, "cpu", use_compile=False)
    assert set(check_agreement(gram)) == {"fastmtl", "bmm"}
