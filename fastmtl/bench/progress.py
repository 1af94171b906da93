"""Progress of a ``fastmtl bench`` run: a bar with an ETA on a terminal, plain lines in a log.

Cases differ a lot in length (a 1k-box NMS takes a second, a style loss of 8 images at 512
pixels half a minute), so the progress counts estimated seconds, not cases. Each step of a
case (the agreement check, then each provider's timing) is estimated from the providers'
medians in earlier results of this kind of device (``benchmarks/results``), or, for a case
never run before, from the time budget alone. The ETA is what is left of the estimate, scaled
by how the run has kept to it so far: on a machine twice as slow it is twice as long.

On a terminal (stderr is a TTY and tqdm is installed) a tqdm bar shows the current case, the
elapsed time and the ETA, refreshed every second, with a line per finished case above it. In
a log (CI) it prints one line per case as it starts, ``[k/n] 1:02 elapsed, ~3:40 left: ...``,
without control characters.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from fastmtl.bench.harness import BASELINE, Case, Timing, _ms

__all__ = ["Progress", "case_label", "estimate_steps", "format_duration", "load_history"]

# torch.compile's first call compiles a graph: a few seconds each on a CPU, plus a one-off
# start-up of dynamo and inductor in the process. Included in the agreement check's estimate.
COMPILE_S = 3.0
COMPILE_STARTUP_S = 10.0
# Building a case's inputs, comparing outputs, bookkeeping.
CASE_OVERHEAD_S = 0.3
# Weight, in estimated seconds, of the prior "the estimate is right" in the ETA's calibration:
# the first seconds of a run (a compiler start-up shorter or longer than guessed) should not
# halve or double the ETA.
PRIOR_S = 30.0


def case_label(case: Case) -> str:
    return f"{case.op} {case.pass_} {str(case.dtype).replace('torch.', '')} {case.size}"


def format_duration(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour)."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def load_history(dirs, device_kind: str, device_name: Optional[str] = None) -> dict:
    """Median ms by ``(op, pass, dtype, size, provider)`` from ``bench-<device_kind>-*.json`` files.

    Newer files (by name: they carry their UTC time) override older ones. Rows measured on
    ``device_name`` are preferred; rows of other devices of the same kind fill the gaps (their
    scale is corrected by the ETA's running calibration). Unreadable files are skipped.
    """
    same, other = {}, {}
    paths = {
        p.resolve()
        for d in dirs
        if d and Path(d).is_dir()
        for p in Path(d).glob(f"bench-{device_kind}-*.json")
    }
    for path in sorted(paths, key=lambda p: p.name):
        try:
            rows = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for r in rows:
            try:
                key = (r["op"], r["pass"], r["dtype"], r["size"], r["provider"])
                target = same if device_name is None or r.get("device_name") == device_name else other
                target[key] = float(r["median_ms"])
            except (KeyError, TypeError, ValueError):
                continue
    return {**other, **same}


def estimate_steps(case: Case, timing: Timing, history: Optional[dict] = None) -> dict:
    """Estimated seconds of each step of :func:`~fastmtl.bench.harness.run_case` on ``case``.

    ``"check"``: one call of every provider (compilation included); then one entry per
    provider: the warm-up and the timed calls, as :class:`~fastmtl.bench.harness.Timing`
    bounds them, from the provider's median in ``history`` when known (else the budgets).
    """
    history = history or {}
    dtype = str(case.dtype).replace("torch.", "")
    steps = {"check": CASE_OVERHEAD_S}
    for name in case.providers:
        t = history.get((case.op, case.pass_, dtype, case.size, name), 0.0) / 1e3
        steps["check"] += t + (COMPILE_S if name == "compile" else 0.0)
        warmup = max(t, timing.warmup_s)
        timed = max(
            timing.min_repeats * t, min(timing.budget_s, timing.max_repeats * t) if t else timing.budget_s
        )
        steps[name] = warmup + timed + (t if case.device.type == "cuda" else 0.0)  # + peak-memory call
    return steps


class Progress:
    """Progress over the cases of one device; feed it :meth:`start`, :meth:`step`, :meth:`finish`.

    ``bar``: None chooses a tqdm bar when ``stream`` is a terminal and tqdm is importable.
    """

    def __init__(
        self,
        device: str,
        cases: list,
        timing: Timing,
        history: Optional[dict] = None,
        *,
        stream=None,
        bar: Optional[bool] = None,
        clock=time.perf_counter,
    ):
        self.device = device
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.steps = [estimate_steps(c, timing, history) for c in cases]
        if any("compile" in c.providers for c in cases):
            self.steps[0]["check"] += COMPILE_STARTUP_S
        self.labels = [case_label(c) for c in cases]
        self.total = sum(sum(s.values()) for s in self.steps)
        self.done = 0.0  # estimated seconds of the finished steps
        self.case = 0  # 1-based index of the current case
        self.pending = None  # name of the step under way
        self.t0 = self.t_step = clock()
        self.seconds = None  # the device's time, set by close()
        self._tqdm = self._make_bar() if (bar if bar is not None else _isatty(self.stream)) else None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        if self._tqdm is not None:
            self._thread = threading.Thread(target=self._tick, name="fastmtl-bench-progress", daemon=True)
            self._thread.start()

    # ---- estimates ------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def _done_now(self) -> float:
        """Estimated seconds done, counting the step under way up to its estimate."""
        if self.pending is None or not self.case:
            return self.done
        expected = self.steps[self.case - 1].get(self.pending, 0.0)
        return self.done + min(self.clock() - self.t_step, expected)

    def eta(self) -> float:
        """Seconds left: the estimate left, scaled by elapsed over estimated seconds done (both
        plus :data:`PRIOR_S`, so that the scale starts at 1 and follows the run as it goes)."""
        done = self._done_now()
        left = max(self.total - done, 0.0)
        if done + PRIOR_S <= 0:  # nothing to scale by yet
            return left
        return left * (self.elapsed() + PRIOR_S) / (done + PRIOR_S)

    # ---- events from the runner -----------------------------------------------------------

    def start(self, index: int) -> None:
        """Case ``index`` (1-based) begins with its agreement check."""
        with self._lock:
            self.case, self.pending, self.t_step = index, "check", self.clock()
        if self._tqdm is None:
            print(
                f"[{index}/{len(self.labels)}] {format_duration(self.elapsed())} elapsed, "
                f"~{format_duration(self.eta())} left: {self.device}: {self.labels[index - 1]}",
                file=self.stream,
                flush=True,
            )
        else:
            self._refresh()

    def step(self, name: str) -> None:
        """Step ``name`` of the current case ended ("check", then each provider's timing)."""
        with self._lock:
            steps = self.steps[self.case - 1]
            self.done += steps.get(name, 0.0)
            names = list(steps)
            nxt = names.index(name) + 1 if name in names else len(names)
            self.pending = names[nxt] if nxt < len(names) else None
            self.t_step = self.clock()
        self._refresh()

    def finish(self, index: int, rows: Optional[list] = None, error: Optional[str] = None) -> None:
        """Case ``index`` ended (``rows`` from run_case, or ``error``); skipped steps count as done.

        An error is printed in both modes; the rows only above a bar (a log gets the table).
        """
        with self._lock:
            self.done = sum(sum(s.values()) for s in self.steps[:index])
            self.pending = None
        line = f"error: {error}" if error is not None else _summary(self.labels[index - 1], rows or [])
        if self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
            self._refresh()
        elif error is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> str:
        """Stops the bar; returns (and prints) a line with the time the device took."""
        self.seconds = self.elapsed()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tqdm is not None:
            self._tqdm.close()
        line = f"{self.device}: {len(self.labels)} cases in {format_duration(self.seconds)}"
        print(line, file=self.stream, flush=True)
        return line

    # ---- the bar --------------------------------------------------------------------------

    def _make_bar(self):
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(
            total=1000,  # per mille of the estimate; the text says the rest
            desc=f"{self.device}: {len(self.labels)} cases, ~{format_duration(self.total)}",
            file=self.stream,
            bar_format="{percentage:3.0f}%|{bar:24}| {desc}",  # the line is cut at the terminal's width
            dynamic_ncols=True,
            leave=False,
        )

    def _refresh(self) -> None:
        bar = self._tqdm
        if bar is None:
            return
        with self._lock:
            done, eta = self._done_now(), self.eta()
            label = self.labels[self.case - 1] if self.case else ""
            case = self.case
        bar.n = min(int(1000 * done / self.total), 1000) if self.total else 0
        bar.set_description_str(
            f"{self.device} [{case}/{len(self.labels)}] {format_duration(self.elapsed())} elapsed, "
            f"~{format_duration(eta)} left: {label}",
            refresh=False,
        )
        bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()


def _isatty(stream) -> bool:
    """A terminal wide enough for a bar (a pseudo-terminal without a size gets lines)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns >= 40
    except (AttributeError, ValueError, OSError):
        return False


def _summary(label: str, rows: list) -> str:
    """``  box_iou fwd float32 1024x1024: fastmtl 0.281 ms, torchvision 79.7x, eager 79.6x``."""
    base = next((r for r in rows if r["provider"] == BASELINE), None)
    parts = [f"{BASELINE} {_ms(base['median_ms'])} ms"] if base else []
    parts += [f"{r['provider']} {r['speedup']:.1f}x" for r in rows if r is not base and r["speedup"]]
    return f"  {label}: " + ", ".join(parts)
