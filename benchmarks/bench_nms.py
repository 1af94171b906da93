"""pytest-benchmark cases for NMS, parametrized over device, size, layout and provider.

Run with ``pytest benchmarks/bench_nms.py`` (``--bench-quick`` for small sizes). The cases
come from :mod:`fastmtl.bench.cases_nms`, as for ``fastmtl bench``; each case's providers are
checked for agreement (kept indices equal) before any is timed.
"""

import functools

import pytest
import torch

from fastmtl.bench import cases_nms as cn
from fastmtl.bench.harness import check_agreement, time_with_pytest_benchmark

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def pytest_generate_tests(metafunc):
    # Sizes depend on the device and on --bench-quick, so they are chosen here, not in a decorator.
    quick = metafunc.config.getoption("--bench-quick")
    kind = {"test_nms": "nms", "test_batched_nms": "batched"}[metafunc.function.__name__]
    params = [(d, n) for d in DEVICES for n in cn.sizes(d, quick)[kind]]
    metafunc.parametrize("device,size", params, ids=[f"{d}-{n}" for d, n in params])


@functools.cache
def _checked(kind: str, device: str, size: int, layout: str):
    """The case and the providers that ran and agree with fastmtl; built and checked once."""
    if kind == "nms":
        case = cn.nms_case(size, layout, device)
    else:
        case = cn.batched_nms_case(size, device, layout)
    if case is None:
        return None, frozenset()
    return case, frozenset(check_agreement(case))  # raises AgreementError on a mismatch


def _run(benchmark, kind, device, size, layout, provider):
    case, ran = _checked(kind, device, size, layout)
    if provider not in ran:
        pytest.skip(
            f"{provider} did not run for {kind} {size} (eager only up to {cn.EAGER_MAX_N} boxes; "
            "or unavailable here)"
        )
    time_with_pytest_benchmark(benchmark, case, provider, device)


@pytest.mark.parametrize("provider", ("fastmtl", "torchvision", "eager"))
@pytest.mark.parametrize("layout", list(cn.LAYOUTS))
def test_nms(benchmark, device, size, layout, provider):
    _run(benchmark, "nms", device, size, layout, provider)


@pytest.mark.parametrize("provider", ("fastmtl", "torchvision", "loop"))
def test_batched_nms(benchmark, device, size, provider):
    _run(benchmark, "batched", device, size, "dense", provider)
