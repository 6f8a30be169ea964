"""Every benchmark the README lists runs with its quick flags and prints a table whose figures were measured.

Each is run as a user runs it (`python benchmarks/<name>.py --quick`), with TMPDIR pointed into the test's own
folder so whatever it leaves behind is seen. qat.py is run by tests/callbacks/test_qat.py (`--run` a fit);
runtime_latency.py's verdict logic by tests/deploy/test_paired_verdict.py, its quick run here."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecls_testing import REPO

TARGET = re.compile(r"^target .* -> (met|NOT met|undecided)", re.MULTILINE)


def run_benchmark(script: str, *args, tmp_path: Path, timeout: int = 900) -> str:
    # a short temp dir of its own: a forkserver's socket path under pytest's long tmp_path exceeds AF_UNIX's 108 bytes
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{output[-6000:]}"
    assert "Traceback" not in output, output[-6000:]
    assert TARGET.search(proc.stdout), f"{script} printed no `target ... -> met | NOT met` line:\n{proc.stdout}"
    # torch's own compile cache (torchinductor_<user>) and a library's 51-byte session id (.ses, a timestamp and a
    # UUID, written on import in zoo.py's run) are theirs to keep; anything else is the benchmark's
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_") and p.name != ".ses")
    shutil.rmtree(scratch, ignore_errors=True)
    assert not left, f"{script} left {left} in the temp dir"
    return output


def test_every_benchmark_the_readme_lists_has_a_test_here_or_is_named_where_it_has_one():
    listed = set(re.findall(r"python benchmarks/(\w+)\.py", (REPO / "README.md").read_text()))
    tested_here = {name.removeprefix("test_").split("_runs")[0] for name in globals() if name.startswith("test_")}
    elsewhere = {"qat"}  # tests/callbacks/test_qat.py runs it on its fit
    assert len(listed) >= 9, f"the README lists only {sorted(listed)}"
    assert listed <= tested_here | elsewhere, f"no quick-run test for {sorted(listed - tested_here - elsewhere)}"


@pytest.mark.slow
def test_data_throughput_runs_quick_and_prints_its_data_line_once(tmp_path):
    out = run_benchmark("data_throughput.py", "--quick", tmp_path=tmp_path)
    rows = re.findall(r"^\s+([12]) \|\s+([\d.]+) \|\s+([\d.]+) \|", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["1", "2"] and all(float(v) > 0 for r in rows for v in r[1:]), out
    assert out.count("data: imagefolder") == 1, out  # one DataModule set up once for both worker counts


@pytest.mark.slow
def test_compression_runs_quick_with_every_variant_measured(tmp_path):
    out = run_benchmark("compression.py", "--quick", tmp_path=tmp_path)
    for variant in ("fp32", "int8", "masks 50%", "pruned ratio 0.3", "pruned ratio 0.5", "pruned MACs/2"):
        row = re.search(rf"^{re.escape(variant)}\s+([\d.]+)\s+[+-][\d.]+\s+\d+K.*?([\d.]+)\s+[\d.]+x", out, re.MULTILINE)
        assert row and float(row.group(2)) > 0, f"no measured row for {variant}:\n{out}"


@pytest.mark.slow
def test_fit_end_scale_runs_quick_with_every_phase_timed(tmp_path):
    out = run_benchmark("fit_end_scale.py", "--quick", tmp_path=tmp_path)
    rows = re.findall(r"^\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", out, re.MULTILINE)
    assert len(rows) == 2, out
    for _, train, onnx, int8, bundle, fit_end in rows:
        assert min(float(onnx), float(int8), float(bundle)) > 0.0, f"a fit-end phase reads 0 s:\n{out}"
        assert float(fit_end) >= float(onnx) + float(int8) + float(bundle) - 0.2, out


@pytest.mark.slow
def test_train_throughput_runs_quick_and_judges_on_paired_rounds(tmp_path):
    out = run_benchmark("train_throughput.py", "--quick", tmp_path=tmp_path)
    assert "median of 2 paired round ratios" in out, out


@pytest.mark.slow
def test_contention_runs_quick_and_names_main_pys_default(tmp_path):
    out = run_benchmark("contention.py", "--quick", tmp_path=tmp_path)
    assert re.search(r"^passive \(main.py's\)\s+[\d.]+\s+[\d.]+", out, re.MULTILINE), out
    assert re.search(r"^omp-default\s", out, re.MULTILINE), out
    assert not re.search(r"^default\s", out, re.MULTILINE), out


@pytest.mark.slow
def test_gpu_throughput_runs_quick_on_a_small_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.jpg")
    out = run_benchmark("gpu_throughput.py", "--quick", "--root", tmp_path / "images", tmp_path=tmp_path)
    rates = re.findall(r"^(?:network alone|train loader|plain PyTorch|edgecls fit).*?\s([\d,]+)\s+[\d.]+$", out, re.MULTILINE)
    assert len(rates) == 6 and all(float(r.replace(",", "")) > 0 for r in rates), out


@pytest.mark.slow
def test_runtime_latency_runs_quick(tmp_path):
    run_benchmark("runtime_latency.py", "--quick", tmp_path=tmp_path)


@pytest.mark.slow
def test_zoo_runs_quick(tmp_path):
    out = run_benchmark("zoo.py", "--quick", tmp_path=tmp_path)
    assert "every model exports ONNX" in out, out


@pytest.mark.slow
def test_mobile_formats_runs_quick(tmp_path):
    for module in ("litert_torch", "executorch", "pnnx"):
        pytest.importorskip(module, reason="the litert, executorch and ncnn extras (in [dev]) are not installed")
    out = run_benchmark("mobile_formats.py", "--quick", tmp_path=tmp_path)
    assert "XNNPACK" in out, out[-3000:]
