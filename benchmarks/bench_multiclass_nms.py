"""pytest-benchmark cases for padded ``multiclass_nms`` and ``soft_nms``.

Run with ``pytest benchmarks/bench_multiclass_nms.py`` (``--bench-quick`` for small sizes). The
cases come from :mod:`fastmtl.bench.cases_multiclass_nms`, as for ``fastmtl bench``; each case's
providers are checked for agreement before any is timed.
"""

import functools

import pytest
import torch

from fastmtl.bench import cases_multiclass_nms as cm
from fastmtl.bench.harness import check_agreement, time_with_pytest_benchmark

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def pytest_generate_tests(metafunc):
    quick = metafunc.config.getoption("--bench-quick")
    params = [(d, i) for d in DEVICES for i in range(len(cm.cases("cpu", quick)))]
    metafunc.parametrize("device,index", params, ids=[f"{d}-{i}" for d, i in params])


@functools.cache
def _checked(device: str, index: int, quick: bool):
    case = cm.cases(device, quick)[index]
    return case, frozenset(check_agreement(case))  # raises AgreementError on a mismatch


@pytest.mark.parametrize("provider", ("fastmtl", "torchvision", "loop", "eager"))
def test_batch_nms(benchmark, request, device, index, provider):
    case, ran = _checked(device, index, request.config.getoption("--bench-quick"))
    if provider not in ran:
        pytest.skip(f"{provider} is not a provider of {case.op} {case.size}")
    time_with_pytest_benchmark(benchmark, case, provider, device)
