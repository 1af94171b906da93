"""pytest-benchmark cases for the IoU family, parametrized over op, device, size and provider.

Run with ``pytest benchmarks/bench_box_iou.py`` (``--bench-quick`` for small sizes without
torch.compile). The cases come from :mod:`fastmtl.bench.cases_box_iou`, as for
``fastmtl bench``; each case's providers are checked for agreement before any is timed.
"""

import functools

import pytest
import torch

from fastmtl.bench import cases_box_iou as cb
from fastmtl.bench.harness import check_agreement, time_with_pytest_benchmark

PROVIDERS = ("fastmtl", "torchvision", "eager", "compile")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def pytest_generate_tests(metafunc):
    # Sizes depend on the device and on --bench-quick, so they are chosen here, not in a decorator.
    quick = metafunc.config.getoption("--bench-quick")
    kind = {"test_pairwise": "fwd", "test_pairwise_backward": "bwd", "test_loss": "loss"}[
        metafunc.function.__name__
    ]
    params = [(d, n) for d in DEVICES for n in cb.sizes(d, quick)[kind]]
    metafunc.parametrize("device,size", params, ids=[f"{d}-{n}" for d, n in params])


@pytest.fixture
def quick(request) -> bool:
    return request.config.getoption("--bench-quick")


@functools.cache
def _checked(kind: str, op: str, device: str, size: int, quick: bool):
    """The case and the providers that ran and agree with fastmtl; built and checked once.

    --bench-quick leaves torch.compile out, as ``fastmtl bench --quick`` does.
    """
    if kind == "fwd":
        case = cb.pairwise_case(op, size, torch.float32, device, use_compile=not quick)
    elif kind == "bwd":
        case = cb.pairwise_backward_case(op, size, device)
    else:
        case = cb.loss_case(op, size, device, use_compile=not quick)
    if case is None:
        return None, frozenset()
    return case, frozenset(check_agreement(case))  # raises AgreementError on a mismatch


def _run(benchmark, kind, op, device, size, quick, provider):
    case, ran = _checked(kind, op, device, size, quick)
    if provider not in ran:
        pytest.skip(
            f"{provider} did not run for {op} (--bench-quick leaves compile out; or unavailable here)"
        )
    time_with_pytest_benchmark(benchmark, case, provider, device)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", list(cb.PAIRWISE))
def test_pairwise(benchmark, op, device, size, quick, provider):
    _run(benchmark, "fwd", op, device, size, quick, provider)


@pytest.mark.parametrize("provider", ("fastmtl", "torchvision"))
@pytest.mark.parametrize("op", cb.BACKWARD_OPS)
def test_pairwise_backward(benchmark, op, device, size, quick, provider):
    _run(benchmark, "bwd", op, device, size, quick, provider)


@pytest.mark.parametrize("provider", ("fastmtl", "torchvision", "compile"))
@pytest.mark.parametrize("op", list(cb.LOSSES))
def test_loss(benchmark, op, device, size, quick, provider):
    _run(benchmark, "loss", op, device, size, quick, provider)
