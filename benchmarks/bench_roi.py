"""pytest-benchmark cases for RoI align and RoI pool, parametrized over device, pass, rois and provider.

Run with ``pytest benchmarks/bench_roi.py`` (``--bench-quick`` for small sizes). The cases come
from :mod:`fastmtl.bench.cases_roi`, as for ``fastmtl bench``; each case's providers are checked
for agreement (outputs and gradients) before any is timed.
"""

import functools

import pytest
import torch

from fastmtl.bench import cases_roi as cr
from fastmtl.bench.harness import check_agreement, time_with_pytest_benchmark

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
PROVIDERS = ("fastmtl", "torchvision")


def pytest_generate_tests(metafunc):
    # Sizes depend on the device and on --bench-quick, so they are chosen here, not in a decorator.
    quick = metafunc.config.getoption("--bench-quick")
    params = [(d, k, quick) for d in DEVICES for k in cr.sizes(d, quick)["rois"]]
    metafunc.parametrize("device,rois,quick", params, ids=[f"{d}-{k}" for d, k, _ in params])


@functools.cache
def _checked(op: str, device: str, rois: int, pass_: str, sampling_ratio: int, quick: bool):
    """The case and the providers that ran and agree with fastmtl; built and checked once."""
    case = cr.roi_case(op, rois, device, pass_=pass_, quick=quick, sampling_ratio=sampling_ratio)
    return case, frozenset(check_agreement(case))  # raises AgreementError on a mismatch


def _run(benchmark, op, device, rois, pass_, sampling_ratio, quick, provider):
    case, ran = _checked(op, device, rois, pass_, sampling_ratio, quick)
    if provider not in ran:
        pytest.skip(f"{provider} is unavailable here")
    time_with_pytest_benchmark(benchmark, case, provider, device)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("sampling_ratio", cr.SAMPLING_RATIOS)
@pytest.mark.parametrize("pass_", ("fwd", "fwd+bwd"))
def test_roi_align(benchmark, device, rois, quick, pass_, sampling_ratio, provider):
    _run(benchmark, "roi_align", device, rois, pass_, sampling_ratio, quick, provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ("fwd", "fwd+bwd"))
def test_roi_pool(benchmark, device, rois, quick, pass_, provider):
    _run(benchmark, "roi_pool", device, rois, pass_, 0, quick, provider)
