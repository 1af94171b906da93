"""pytest-benchmark set-up: ``--bench-quick``, and collection of ``bench_*.py`` files here.

The normal test run never loads this file: pyproject's ``testpaths`` is ``tests``.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true", help="small sizes, no torch.compile (smoke test)")


def pytest_collect_file(file_path, parent):
    # `pytest benchmarks` would skip bench_*.py (not test_*.py). A file named on the command
    # line is collected by pytest itself, so leave those alone to avoid collecting it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if not parent.session.isinitpath(file_path):
            return pytest.Module.from_parent(parent, path=file_path)
    return None
