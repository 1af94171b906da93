"""Hypothesis runs of the bad-input property (tests/reliability/cases.py), one test per op and
route. Not collected by the main run (its name is not test_*): ``test_properties.py`` runs it
group by group in subprocesses, so that a crash fails a test instead of the whole run.

Run one group by hand: ``python -m pytest tests/reliability/props_run.py -k "roi_"``.
Environment: ``FASTMTL_PROPERTY_EXAMPLES`` (examples per op and route, default 100),
``FASTMTL_SEED`` (a seed instead of the fixed derandomized run), ``FASTMTL_PROPERTY_OPS``
(comma-separated spec names, e.g. ``roi_align[op]``: only those), ``FASTMTL_PROPERTY_COUNTS``
(a file the counts of cases tried are appended to, as JSON lines).
"""

import collections
import json
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from tests.reliability.cases import SPECS, check_case, draw_case

EXAMPLES = int(os.environ.get("FASTMTL_PROPERTY_EXAMPLES", "100"))
SEED = os.environ.get("FASTMTL_SEED")

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not SEED,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

COUNTS = collections.Counter()


@pytest.fixture(autouse=True, scope="module")
def _write_counts():
    yield
    path = os.environ.get("FASTMTL_PROPERTY_COUNTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dict(COUNTS)) + "\n")


def _property(name):
    spec = SPECS[name]

    @SETTINGS
    @given(data=st.data())
    def prop(data):
        kwargs, mutations, names, originals = draw_case(data.draw, st, spec)
        note(f"mutations {mutations}, names {sorted(names)}")
        note("call: " + ", ".join(f"{k}={_show(v)}" for k, v in kwargs.items()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = check_case(spec, kwargs, mutations, names, originals)
        COUNTS["cases"] += 1
        COUNTS[outcome] += 1

    return seed(int(SEED))(prop) if SEED else prop


def _show(v):
    if isinstance(v, torch.Tensor):
        values = v.tolist() if v.device.type != "meta" and v.numel() <= 64 else "..."
        layout = f"{v.dtype}, {v.device}, stride={v.stride()}, grad={v.requires_grad}"
        return f"Tensor({list(v.shape)}, {layout}, {values})"
    return repr(v)


OPS = [n for n in os.environ.get("FASTMTL_PROPERTY_OPS", "").split(",") if n] or sorted(SPECS)


@pytest.mark.parametrize("name", OPS)
def test_bad_input_is_rejected_or_correct(name):
    _property(name)()
