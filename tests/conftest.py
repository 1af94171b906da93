"""Fixtures shared by every test: a freshly seeded generator whose seed shows up on failure."""

import os
import random

import pytest
import torch

_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture
def seed(request) -> int:
    """A new seed per test (``FASTMTL_SEED=<int>`` pins it); reported when the test fails."""
    value = (
        int(os.environ["FASTMTL_SEED"])
        if os.environ.get("FASTMTL_SEED")
        else random.SystemRandom().getrandbits(31)
    )
    request.node.stash[_SEED_KEY] = value
    return value


@pytest.fixture
def gen(seed) -> torch.Generator:
    """CPU ``torch.Generator`` seeded with :func:`seed`; box generators take it explicitly."""
    return torch.Generator().manual_seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = item.stash.get(_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("fastmtl seed", f"rerun with FASTMTL_SEED={seed}"))
    return report


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: torch.compile tests (slow; deselect with -m 'not compile')")
