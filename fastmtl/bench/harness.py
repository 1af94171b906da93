"""A small timing harness: check that providers agree, then time each one and write rows.

A :class:`Case` is one op at one size and dtype with several providers (``name -> callable``,
fastmtl first). :func:`run_case` calls every provider once and compares it with the first
before timing any, then warms up, synchronizes and times calls within a time budget (CUDA
events on GPU, ``time.perf_counter`` on CPU). Each row carries the median, p20 and p80, the
peak memory, fastmtl's speedup over the provider and the machine it ran on, so a results
file stands on its own.
"""

import csv
import functools
import json
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

import fastmtl

__all__ = [
    "BASELINE",
    "FIELDS",
    "AgreementError",
    "Case",
    "Timing",
    "check_agreement",
    "default_out_dir",
    "format_extras",
    "format_table",
    "fwd_bwd",
    "machine_info",
    "mark_full_only",
    "peak_bandwidth_gbs",
    "run_case",
    "write_results",
]

BASELINE = "fastmtl"

FIELDS = (
    "op", "provider", "pass", "dtype", "size",
    "median_ms", "p20_ms", "p80_ms", "repeats", "peak_mem_mb", "speedup",
    "device", "device_name", "threads", "torch", "fastmtl", "git_rev", "extra",
)  # fmt: skip

# Nominal peak DRAM bandwidth in GB/s, matched in order against the CUDA device name
# ("NVIDIA H100 80GB HBM3" is the SXM part).
_PEAK_BANDWIDTH_GBS = (
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),
    ("H200", 4800.0),
)


class AgreementError(AssertionError):
    """A provider's result differs from fastmtl's: timing it would compare different work."""


@dataclass(eq=False)  # compared and hashed by identity: it holds tensors
class Case:
    """One op at one size and dtype, with the providers to compare on the same inputs.

    ``providers`` maps a name to a callable taking ``*inputs``; the first is the reference
    for the agreement check and the speedups. Float outputs must agree within ``atol`` and
    ``rtol``; integer and bool outputs (kept indices, masks) must be equal, dtype included.
    A provider named in ``optional`` may fail on its first call (torch.compile without a
    working compiler): it is then skipped with a note instead of failing the run.
    ``extra_fn(output, median_ms, info) -> dict`` fills a row's ``extra`` column (e.g.
    achieved bandwidth). ``full_only``: a row that only ``fastmtl bench --full`` runs (see
    :func:`mark_full_only`).
    """

    op: str
    size: str
    dtype: torch.dtype
    inputs: tuple
    providers: dict
    pass_: str = "fwd"
    atol: float = 1e-5
    rtol: float = 1e-5
    optional: frozenset = frozenset()
    extra_fn: Optional[Callable] = None
    full_only: bool = False

    @property
    def device(self) -> torch.device:
        return self.inputs[0].device


@dataclass
class Timing:
    """At least ``min_repeats`` timed calls, more until ``budget_s`` has passed."""

    budget_s: float = 1.0
    warmup_s: float = 0.2
    min_repeats: int = 3
    max_repeats: int = 1000


def mark_full_only(cases: list, in_default: Callable[[Case], bool]) -> list:
    """Marks the cases that ``in_default`` rejects as ``full_only``; returns ``cases``.

    The default ``fastmtl bench`` keeps a representative subset, one or two rows per op family
    and size class, so that it stays a few minutes long as families are added; ``--full``
    (and ``--quick``, whose cases are all small) runs every case.
    """
    for case in cases:
        case.full_only = not in_default(case)
    return cases


def fwd_bwd(fn: Callable, grad_out: Optional[torch.Tensor] = None) -> Callable:
    """Wraps ``fn(*inputs)`` into forward + backward to the inputs that require grad.

    ``grad_out`` is the incoming gradient (None for a scalar loss). The wrapper returns
    ``(output, *grads)`` so the agreement check covers the gradients too; it uses
    ``autograd.grad`` so repeated calls do not accumulate into ``.grad``.
    """

    def run(*inputs):
        out = fn(*inputs)
        wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        return (out, *torch.autograd.grad(out, wrt, grad_out))

    return run


# ---- machine information ------------------------------------------------------------------


def _repo_root() -> Optional[Path]:
    """The checkout fastmtl was imported from, or None for an installed copy."""
    root = Path(fastmtl.__file__).resolve().parent.parent
    # .git is checked so that git does not report a repository that merely encloses a venv.
    return root if (root / ".git").exists() else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision() -> str:
    """Short revision of the checkout, ``-dirty`` when tracked files have local edits."""
    root = _repo_root()
    rev = _git(root, "rev-parse", "--short", "HEAD") if root else None
    if not rev:
        return "unknown"
    return rev + ("-dirty" if _git(root, "status", "--porcelain", "--untracked-files=no") else "")


def machine_info(device) -> dict:
    """The machine columns of every row."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastmtl": fastmtl.__version__,
        "git_rev": git_revision(),
    }


def peak_bandwidth_gbs(device_name: str) -> Optional[float]:
    """Nominal peak memory bandwidth (GB/s) of a known GPU, else None."""
    return next((gbs for key, gbs in _PEAK_BANDWIDTH_GBS if key in device_name), None)


# ---- agreement and timing -----------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_agreement(case: Case, notes: Optional[list] = None) -> dict:
    """Calls every provider once and compares it with the first; returns the outputs by name.

    Raises :class:`AgreementError` on a mismatch (for integer outputs, any difference). A
    failing provider listed in ``case.optional`` is dropped with a line in ``notes``; any
    other failure propagates.
    This first call is also where torch.compile compiles, so compilation is never timed.
    """
    outputs = {}
    for name, fn in case.providers.items():
        try:
            outputs[name] = fn(*case.inputs)
        except Exception as e:  # torch.compile can fail in many ways (no compiler, no triton)
            if name not in case.optional:
                raise
            if notes is not None:
                notes.append(f"{_case_label(case)}: {name} skipped ({type(e).__name__}: {e})"[:300])
    _sync(case.device)
    names = list(outputs)
    if _is_exact(outputs[names[0]]):  # indices, masks: equal values and dtype
        tolerance = {"atol": 0, "rtol": 0, "check_dtype": True}
    else:  # check_dtype=False: fastmtl's pairwise ops return float32 for half input.
        tolerance = {"atol": case.atol, "rtol": case.rtol, "check_dtype": False}
    for name in names[1:]:
        try:
            torch.testing.assert_close(outputs[name], outputs[names[0]], **tolerance)
        except AssertionError as e:
            raise AgreementError(f"{_case_label(case)}: {name} disagrees with {names[0]}: {e}") from None
    return outputs


def _is_exact(output) -> bool:
    """Whether an output (a tensor or a tuple of them) holds only integer or bool tensors."""
    if isinstance(output, (tuple, list)):
        return len(output) > 0 and all(_is_exact(o) for o in output)
    return isinstance(output, torch.Tensor) and not (output.is_floating_point() or output.is_complex())


def _case_label(case: Case) -> str:
    return f"{case.op} {case.pass_} {_dtype_name(case.dtype)} {case.size} ({case.device.type})"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _time_one(fn: Callable, inputs: tuple, device: torch.device) -> float:
    """One call in ms: device time between CUDA events on GPU, wall time on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn(*inputs)
    return (time.perf_counter() - t0) * 1e3


def _time_calls(fn: Callable, inputs: tuple, device: torch.device, timing: Timing) -> list:
    # Warm-up: at least one call (caches, allocator, lazy initialisation), then until warmup_s.
    deadline = time.perf_counter() + timing.warmup_s
    fn(*inputs)
    while time.perf_counter() < deadline:
        fn(*inputs)
    _sync(device)
    times = []
    deadline = time.perf_counter() + timing.budget_s
    while len(times) < timing.min_repeats or (
        time.perf_counter() < deadline and len(times) < timing.max_repeats
    ):
        times.append(_time_one(fn, inputs, device))
    return times


def _peak_mem_mb(fn: Callable, inputs: tuple, device: torch.device) -> Optional[float]:
    """Peak memory one call allocates above what was held before it."""
    if device.type == "cpu":
        return _cpu_peak_mem_mb(fn, inputs)
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    held = torch.cuda.memory_allocated(device)
    fn(*inputs)
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - held) / 2**20


def _cpu_peak_mem_mb(fn: Callable, inputs: tuple) -> Optional[float]:
    """The CPU allocator's peak during one call, above its total before the call's first
    allocation: torch.profiler records that total with each allocation (c10's CPU memory
    reporter; fastmtl's gradient cache reports to it too). None without allocation events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*inputs)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        alloc = node.extra_fields
        if node.tag == _EventType.Allocation and alloc.alloc_size > 0:
            events.append((node.start_time_ns, alloc.total_allocated, alloc.alloc_size))
        stack.extend(node.children)
    if not events:
        return None
    events.sort()
    before = events[0][1] - events[0][2]
    return (max(total for _, total, _ in events) - before) / 2**20


def _stats(times: list) -> dict:
    if len(times) == 1:
        return {"median_ms": times[0], "p20_ms": times[0], "p80_ms": times[0], "repeats": 1}
    q = statistics.quantiles(times, n=5, method="inclusive")  # cut points at 20, 40, 60, 80 %
    return {"median_ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[3], "repeats": len(times)}


def run_case(
    case: Case,
    timing: Optional[Timing] = None,
    info: Optional[dict] = None,
    notes: Optional[list] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> list:
    """Checks agreement, then times every provider; returns one row (a dict of FIELDS) each.

    ``speedup`` is the provider's median over fastmtl's (> 1: fastmtl is faster).
    ``progress(step)`` is called after each step: ``"check"``, then each provider's name.
    """
    timing = timing or Timing()
    info = info or machine_info(case.device)
    outputs = check_agreement(case, notes)
    if progress is not None:
        progress("check")
    rows = []
    for name, out in outputs.items():
        fn = case.providers[name]
        row = {"op": case.op, "provider": name, "pass": case.pass_, "dtype": _dtype_name(case.dtype)}
        row["size"] = case.size
        row.update(_stats(_time_calls(fn, case.inputs, case.device, timing)))
        row["peak_mem_mb"] = _peak_mem_mb(fn, case.inputs, case.device)
        row["extra"] = case.extra_fn(out, row["median_ms"], info) if case.extra_fn else {}
        row.update(info)
        rows.append(row)
        if progress is not None:
            progress(name)
    base = next((r["median_ms"] for r in rows if r["provider"] == BASELINE), None)
    for row in rows:
        row["speedup"] = row["median_ms"] / base if base else None
    return [{k: row.get(k) for k in FIELDS} for row in rows]


# ---- output -------------------------------------------------------------------------------


def default_out_dir() -> Path:
    """``benchmarks/results`` of the checkout when run from one, else ``./fastmtl-bench-results``."""
    root = _repo_root()
    if root is not None and (root / "benchmarks").is_dir():
        return root / "benchmarks" / "results"
    return Path.cwd() / "fastmtl-bench-results"


def write_results(rows: list, out_dir, device_kind: str, meta: Optional[dict] = None) -> tuple:
    """Writes ``bench-<device>-<UTC time>.csv`` and ``.json`` into ``out_dir``; returns both paths.

    The CSV holds ``extra`` as a JSON string; the JSON file holds it as an object.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    stem = out_dir / f"bench-{device_kind}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({**r, "extra": json.dumps(r["extra"] or {})} for r in rows)
    doc = {"created_utc": now.isoformat(timespec="seconds"), "meta": meta or {}, "rows": rows}
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return csv_path, json_path


def _ms(x: float) -> str:
    # About three significant digits without switching to exponent notation.
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def format_table(rows: list) -> str:
    """One line per case: fastmtl's median ms, then each alternative's as ``ms (N.Nx)``.

    ``N.Nx`` is fastmtl's speedup over that alternative; ``-`` marks a provider that did not run.
    """
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], r["pass"], r["dtype"], r["size"]), {})[r["provider"]] = r
    head = ["op", "pass", "dtype", "size"] + [f"{p} ms" for p in providers]
    lines = []
    for key, cells in by_case.items():
        line = list(key)
        for p in providers:
            r = cells.get(p)
            if r is None:
                line.append("-")
            elif p == BASELINE or r["speedup"] is None:
                line.append(_ms(r["median_ms"]))
            else:
                line.append(f"{_ms(r['median_ms'])} ({r['speedup']:.1f}x)")
        lines.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

    def fmt(cells):  # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(x).rstrip() for x in lines])


def format_extras(rows: list) -> list:
    """fastmtl rows' ``extra`` entries as lines, e.g. ``box_iou fwd float32 8192x8192: ...``."""
    lines = []
    for r in rows:
        if r["provider"] == BASELINE and r["extra"]:
            items = ", ".join(f"{k}={_fmt_value(v)}" for k, v in r["extra"].items())
            lines.append(f"{r['op']} {r['pass']} {r['dtype']} {r['size']}: {items}")
    return lines


def _fmt_value(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _synced(fn: Callable, *inputs):
    out = fn(*inputs)
    torch.cuda.synchronize()
    return out


def time_with_pytest_benchmark(benchmark, case: Case, provider: str, device: str) -> None:
    """Times one provider of an agreed case with pytest-benchmark's ``benchmark`` fixture."""
    fn = case.providers[provider]
    if case.device.type == "cuda":  # pytest-benchmark uses a host clock: wait for the GPU
        fn = functools.partial(_synced, fn)
    benchmark.group = f"{case.op} {case.pass_} {case.size} {device}"
    benchmark.extra_info.update(provider=provider, pass_=case.pass_, size=case.size)
    benchmark(fn, *case.inputs)
