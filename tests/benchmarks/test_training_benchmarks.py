"""The training-side benchmarks the README lists (data loading, training throughput, contention, compression, the
fit-end chain's scale, a folder on a GPU) each run with their quick flags and print a table whose figures were
measured. tests/benchmarks/test_deploy_benchmarks.py runs the device-side ones."""

import re

import numpy as np
import pytest
from PIL import Image

from benchmark_run import run_benchmark


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
