"""Latency, throughput and a resident-memory leak check for one runner at one batch size.

Only ``runner.infer`` sits inside the timed region (the input is made once, progress is reported
outside the clock), so what is measured is the runner, not the benchmark.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from deploy.registry import Runner

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident set size now, in MB = 10^6 bytes like every size in this project (Linux /proc; peak RSS
    where /proc is absent)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE / 1e6
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB elsewhere


def percentile(values_ms: np.ndarray, q: float) -> float:
    return float(np.percentile(values_ms, q))


def measure(runner: Runner, batch_size: int, iterations: int = 100, warmup: int = 10,
            progress: Optional[Callable[[int], None]] = None, leak_threshold_mb: float = 8.0, seed: int = 0,
            keep_times: bool = False) -> dict:
    """Time ``iterations`` calls of runner.infer on a random normalized batch after ``warmup`` calls.

    Returns p50/p90/p99/mean in ms, throughput in images/s, peak_rss_mb (the process's resident memory at its
    highest during the timed run: runtime, weights and arenas included) and rss_growth_mb: resident memory (MB = 10^6
    bytes) after the timed run minus before it (after warmup, so allocator arenas have settled); memory_ok
    is False when it grew by more than leak_threshold_mb. keep_times adds the raw per-call times
    (times_ms), for callers that interleave several runners and pool their samples. At least one untimed
    call is always made, even with warmup=0: a runner's first call pays one-off setup.
    """
    if batch_size < 1 or iterations < 1 or warmup < 0:
        raise ValueError(f"batch_size and iterations must be >= 1 and warmup >= 0, got {batch_size}, "
                         f"{iterations} and {warmup}")
    shape = tuple(d if d else 224 for d in runner.input_shape)
    batch = np.random.default_rng(seed).standard_normal((batch_size,) + shape).astype(np.float32)
    for _ in range(max(warmup, 1)):
        runner.infer(batch)
    rss_before = rss_mb()
    peak = rss_before
    times = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter
    for i in range(iterations):
        start = clock()
        runner.infer(batch)
        times[i] = clock() - start
        peak = max(peak, rss_mb())  # outside the clock; one /proc read is microseconds
        if progress is not None:
            progress(1)
    growth = rss_mb() - rss_before
    times_ms = times * 1000.0
    result = {
        "batch": batch_size,
        "iterations": iterations,
        "p50_ms": percentile(times_ms, 50),
        "p90_ms": percentile(times_ms, 90),
        "p99_ms": percentile(times_ms, 99),
        "mean_ms": float(times_ms.mean()),
        "throughput": batch_size * iterations / float(times.sum()),
        "rss_growth_mb": growth,
        "peak_rss_mb": peak,
        "memory_ok": growth <= leak_threshold_mb,
    }
    if keep_times:
        result["times_ms"] = times_ms.tolist()
    return result


def soak(runner: Runner, batch_size: int, seconds: float, max_growth_mb: float = 16.0, warmup_fraction: float = 0.1,
         seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> dict:
    """A timed stress loop: runner.infer back to back for `seconds`. The first `warmup_fraction` of the time
    settles allocator arenas and caches and is not judged; after it, resident memory growth (end minus start
    of the judged part) and latency drift (p50 of the last tenth of the calls against the first tenth, in %)
    are reported. memory_ok is False when memory grew by more than max_growth_mb."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    shape = tuple(d if d else 224 for d in runner.input_shape)
    batch = np.random.default_rng(seed).standard_normal((batch_size,) + shape).astype(np.float32)
    runner.infer(batch)
    begin = clock()
    judged_from = begin + seconds * warmup_fraction
    while clock() < judged_from:
        runner.infer(batch)
    rss_start = rss_mb()
    peak = rss_start
    times = []
    end = begin + seconds
    while True:
        start = clock()
        runner.infer(batch)
        stop = clock()
        times.append(stop - start)
        peak = max(peak, rss_mb())
        if stop >= end:
            break
    rss_end = rss_mb()
    times_ms = np.asarray(times) * 1000.0
    tenth = max(1, len(times_ms) // 10)
    first, last = float(np.median(times_ms[:tenth])), float(np.median(times_ms[-tenth:]))
    growth = rss_end - rss_start
    return {"batch": batch_size, "seconds": seconds, "calls": len(times_ms), "p50_ms": float(np.median(times_ms)),
            "first_p50_ms": first, "last_p50_ms": last, "latency_drift_pct": 100.0 * (last - first) / first,
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "peak_rss_mb": peak, "rss_growth_mb": growth,
            "max_growth_mb": max_growth_mb, "memory_ok": growth <= max_growth_mb}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the sample median and a distribution-free confidence interval for the true median
    from order statistics (the k-th smallest and k-th largest value, k the largest rank whose binomial tail
    stays within (1 - confidence) / 2). Too few values for that confidence give (median, min, max) widened to
    infinity on both sides, so a verdict built on it stays undecided instead of trusting a handful of rounds."""
    from math import comb

    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    median = float(np.median(ordered))
    tail, k = (1.0 - confidence) / 2.0, 0
    cumulative = 0.0
    for rank in range(n // 2 + 1):  # P(Binomial(n, 1/2) <= rank)
        cumulative += comb(n, rank) / 2.0 ** n
        if cumulative > tail:
            break
        k = rank + 1
    if k == 0:
        return median, float("-inf"), float("inf")
    return median, ordered[k - 1], ordered[n - k]


def ratio_verdict(numerators: Sequence[float], denominators: Sequence[float], goal: float,
                  lower_is_better: bool = False, confidence: float = 0.95) -> dict:
    """A ratio target judged on paired rounds: round i's ratio is numerators[i] / denominators[i] (two
    runtimes' p50s from the same interleaved round, so load that came and went hit both), and the verdict
    is on the confidence interval of their median: `met` when the whole interval is on the goal's good
    side, `NOT met` when it is wholly on the bad side, `undecided` when it straddles the goal."""
    if len(numerators) != len(denominators) or len(numerators) == 0:
        raise ValueError(f"paired rounds need equally many values on both sides, got {len(numerators)} and "
                         f"{len(denominators)}")
    ratios = [a / b for a, b in zip(numerators, denominators)]
    median, low, high = median_interval(ratios, confidence)
    good, bad = (high <= goal, low > goal) if lower_is_better else (low >= goal, high < goal)
    return {"ratio": median, "low": low, "high": high, "rounds": len(ratios), "goal": goal,
            "verdict": "met" if good else "NOT met" if bad else "undecided"}
