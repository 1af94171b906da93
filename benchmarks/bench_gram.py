"""pytest-benchmark cases for the style loss and the Gram matrix, parametrized over device, size
and provider.

Run with ``pytest benchmarks/bench_gram.py`` (``--bench-quick`` for the quick sizes without
torch.compile). The cases come from :mod:`fastmtl.bench.cases_gram`, as for ``fastmtl bench
--ops style_loss``; each case's providers are checked for agreement (loss and gradients)
before any is timed.
"""

import functools

import pytest
import torch

from fastmtl.bench import cases_gram as cg
from fastmtl.bench.harness import check_agreement, time_with_pytest_benchmark

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def pytest_generate_tests(metafunc):
    # Sizes depend on the device and on --bench-quick, so they are chosen here, not in a decorator.
    quick = metafunc.config.getoption("--bench-quick")
    kind = {"test_style_loss": "style", "test_gram_matrix": "gram"}[metafunc.function.__name__]
    params = [(d, s) for d in DEVICES for s in cg.sizes(d, quick)[kind]]
    metafunc.parametrize("device,size", params, ids=[f"{d}-{s[0]}px-x{s[1]}" for d, s in params])


@pytest.fixture
def quick(request) -> bool:
    return request.config.getoption("--bench-quick")


@functools.cache
def _checked(kind: str, device: str, size: tuple, layer: int, quick: bool):
    """The case and the providers that ran and agree with fastmtl; built and checked once."""
    side, batch = size
    if kind == "style":
        case = cg.style_case(side, batch, device, use_compile=not quick)
    else:
        case = cg.gram_case(layer, side, batch, device, use_compile=not quick)
    return case, frozenset(check_agreement(case))  # raises AgreementError on a mismatch


def _run(benchmark, kind, device, size, layer, quick, provider):
    case, ran = _checked(kind, device, size, layer, quick)
    if provider not in ran:
        pytest.skip(f"{provider} did not run (--bench-quick leaves compile out; or unavailable here)")
    time_with_pytest_benchmark(benchmark, case, provider, device)


@pytest.mark.parametrize("provider", ("fastmtl", "eager", "compile"))
def test_style_loss(benchmark, device, size, quick, provider):
    _run(benchmark, "style", device, size, -1, quick, provider)


@pytest.mark.parametrize("provider", ("fastmtl", "bmm", "compile"))
@pytest.mark.parametrize(
    "layer", range(len(cg.VGG19_STYLE_LAYERS)), ids=[n for n, _, _ in cg.VGG19_STYLE_LAYERS]
)
def test_gram_matrix(benchmark, device, size, layer, quick, provider):
    _run(benchmark, "gram", device, size, layer, quick, provider)
