"""The device-side benchmarks the README lists (runtime latency, the model zoo, the phone formats) each run with their
quick flags and print a table whose figures were measured; and every benchmark the README lists has such a test,
here or in tests/benchmarks/test_training_benchmarks.py. qat.py is run by tests/callbacks/test_qat.py (`--run` a
fit); runtime_latency.py's verdict logic by tests/deploy/test_paired_verdict.py, its quick run here."""

import re
from pathlib import Path

import pytest

from benchmark_run import run_benchmark
from edgecls_testing import REPO


def test_every_benchmark_the_readme_lists_has_a_quick_run_test_or_is_named_where_it_has_one():
    listed = set(re.findall(r"python benchmarks/(\w+)\.py", (REPO / "README.md").read_text()))
    tests = "".join(f.read_text() for f in Path(__file__).parent.glob("test_*.py"))
    tested_here = set(re.findall(r"^def test_(\w+?)_runs_quick", tests, re.MULTILINE))
    elsewhere = {"qat"}  # tests/callbacks/test_qat.py runs it on its fit
    assert len(listed) >= 9, f"the README lists only {sorted(listed)}"
    assert listed <= tested_here | elsewhere, f"no quick-run test for {sorted(listed - tested_here - elsewhere)}"


@pytest.mark.slow
def test_runtime_latency_runs_quick(tmp_path):
    out = run_benchmark("runtime_latency.py", "--quick", tmp_path=tmp_path)
    assert "MobileNetV2 112x112" in out, out  # --quick's size, said where the figures are
    for row in ("torch eager", "ort fp32", "ort int8 cpu-form", "openvino int8 cpu-form", "openvino ir int8 nncf"):
        assert re.search(rf"^{row}\s+1\s+[\d.]+", out, re.MULTILINE), f"no batch-1 row {row}:\n{out}"


@pytest.mark.slow
def test_zoo_runs_quick(tmp_path):
    out = run_benchmark("zoo.py", "--quick", tmp_path=tmp_path)
    assert "every model exports ONNX" in out, out


@pytest.mark.slow
def test_mobile_formats_runs_quick(tmp_path):
    for module in ("litert_torch", "executorch", "pnnx"):
        pytest.importorskip(module, reason="the litert, executorch and ncnn extras (in [dev]) are not installed")
    out = run_benchmark("mobile_formats.py", "--quick", tmp_path=tmp_path)
    assert "XNNPACK delegates every convolution" in out, out[-3000:]
    for fp32, int8 in (("litert fp32", "litert int8"), ("executorch fp32", "executorch int8")):
        assert re.search(rf"^target {int8} >= 1.5x {fp32} at batch 1: [\d.]+x", out, re.MULTILINE), out[-3000:]
