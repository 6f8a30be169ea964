"""Speed targets judged on paired rounds: the per-round ratio of two runtimes' p50s, and an order-statistic
interval of its median that must clear the goal (met), lie wholly on the wrong side (NOT met) or straddle it
(undecided), so a noisy shared machine gives no verdict instead of a wrong one."""

import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import pytest

from deploy.benchmark import median_interval, ratio_verdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_median_interval_is_the_binomial_order_statistics():
    assert median_interval(range(9)) == (4.0, 1.0, 7.0)  # P(Bin(9, .5) <= 1) = 1.95% <= 2.5%: ranks 2 and 8
    assert median_interval(range(15)) == (7.0, 3.0, 11.0)
    median, low, high = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])  # 5 rounds cannot give 95%
    assert median == 3.0 and low == -np.inf and high == np.inf


def test_a_speedup_that_clears_the_goal_in_every_round_is_met_despite_load():
    rng = np.random.default_rng(0)
    load = rng.uniform(1.0, 3.0, 15)  # the machine's load changes 3x between rounds, alike for both rows
    baseline, fast = 2.0 * load, 0.7 * load * rng.uniform(0.97, 1.03, 15)
    verdict = ratio_verdict(baseline, fast, 2.5)
    assert verdict["verdict"] == "met" and 2.5 <= verdict["low"] <= verdict["ratio"] <= verdict["high"]
    assert verdict["rounds"] == 15 and verdict["ratio"] == pytest.approx(2.0 / 0.7, rel=0.03)


def test_a_speedup_wholly_below_the_goal_is_not_met():
    rng = np.random.default_rng(1)
    load = rng.uniform(1.0, 3.0, 15)
    verdict = ratio_verdict(2.0 * load, 1.0 * load * rng.uniform(0.95, 1.05, 15), 2.5)
    assert verdict["verdict"] == "NOT met" and verdict["high"] < 2.5


def test_a_ratio_whose_interval_straddles_the_goal_is_undecided():
    rng = np.random.default_rng(2)
    ratios = 2.5 * rng.uniform(0.8, 1.2, 15)  # noise on one side only: the ratio swings across the goal
    verdict = ratio_verdict(ratios, np.ones(15), 2.5)
    assert verdict["verdict"] == "undecided" and verdict["low"] < 2.5 < verdict["high"]
    assert ratio_verdict([3.0] * 5, [1.0] * 5, 2.5)["verdict"] == "undecided"  # too few rounds to judge


def test_lower_is_better_goals_and_unpaired_rounds():
    assert ratio_verdict([0.9] * 9, [1.0] * 9, 1.0, lower_is_better=True)["verdict"] == "met"
    assert ratio_verdict([1.1] * 9, [1.0] * 9, 1.0, lower_is_better=True)["verdict"] == "NOT met"
    with pytest.raises(ValueError, match="paired rounds"):
        ratio_verdict([1.0, 2.0], [1.0], 1.0)


def test_the_latency_benchmark_judges_the_best_path_on_its_own_rounds(monkeypatch):
    spec = importlib.util.spec_from_file_location("runtime_latency", os.path.join(REPO, "benchmarks",
                                                                                   "runtime_latency.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    load = np.linspace(1.0, 2.0, 9)
    p50 = {"torch eager": 8 * load, "ort fp32": 3 * load, "ort int8 cpu-form": 2.5 * load,
           "openvino fp32": 3.3 * load, "openvino int8 cpu-form": 1.0 * load, "openvino ir fp32": 3.2 * load,
           "openvino ir int8 nncf": 1.2 * load}

    def rounds_of(batch: int) -> SimpleNamespace:
        return SimpleNamespace(runners=p50, batch=batch, round_p50={k: list(v) for k, v in p50.items()},
                               rows=lambda: [{"runtime": k, "p50_ms": float(np.median(v))} for k, v in p50.items()])

    monkeypatch.setitem(bench.INSTRUCTIONS, "VNNI", (lambda: True, "int8 dot products"))
    verdicts = {text: v["verdict"] for text, v in bench.judge(rounds_of(1), 0.95)}
    assert verdicts == {
        "best CPU path (openvino int8 cpu-form) >= NNCF's OpenVINO INT8 IR in speed": "met",  # 1.2x faster
        "ONNX Runtime FP32 >= 2x torch eager": "met",
        "best CPU path (openvino int8 cpu-form) >= 10x torch eager": "NOT met",  # 8x
        "best CPU path (openvino int8 cpu-form) >= 2.5x ONNX Runtime FP32": "met",
        "OpenVINO FP32 <= ONNX Runtime FP32 (p50 ratio)": "NOT met",
        "ort int8 cpu-form >= 1.5x ort fp32": "NOT met",
        "openvino int8 cpu-form >= 1.5x openvino fp32": "met",
        "openvino ir int8 nncf >= 1.5x openvino ir fp32": "met"}
    # at batch 32 only the NNCF comparison is judged
    assert [text for text, _ in bench.judge(rounds_of(32), 0.95)] == [
        "best CPU path (openvino int8 cpu-form) >= NNCF's OpenVINO INT8 IR in speed"]
    # a CPU without VNNI: the targets that rest on it say so instead of a verdict
    monkeypatch.setitem(bench.INSTRUCTIONS, "VNNI", (lambda: False, "int8 dot products"))
    judged = dict(bench.judge(rounds_of(1), 0.95))
    unjudged = [text for text, v in judged.items() if v["verdict"] == "not judged"]
    assert len(unjudged) == 5 and all("10x" in t or "2.5x" in t or "1.5x" in t for t in unjudged)
    line = bench.paired_line(unjudged[0], judged[unjudged[0]], 0.95)
    assert line.endswith("-> not judged on this CPU: no VNNI (int8 dot products)")
