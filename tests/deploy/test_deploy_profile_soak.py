"""`bench --profile` writes the runtime's own per-operator profile and names the slowest layers; `bench --soak`
reports latency drift and memory growth and exits 1 with a sentence past its bound."""

import json
import os
import time

import numpy as np
import onnx
import pytest


def _node_names(path):
    graph = onnx.load(path).graph
    return {node.name for node in graph.node}, {node.op_type for node in graph.node}


def test_profile_writes_a_chrome_trace_and_prints_the_top_operators_with_their_share(digits_bundle, tmp_path,
                                                                                     run_cli):
    out_dir = tmp_path / "profile"
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "4", "--iterations", "20", "--no-progress", "--profile", out_dir)
    assert code == 0, err
    trace = out_dir / "onnxruntime-model.onnx-b4.json"
    events = json.loads(trace.read_text())
    assert any(e.get("ph") == "X" and e.get("cat") == "Node" for e in events)  # what chrome://tracing draws
    assert [p.name for p in out_dir.iterdir()] == [trace.name]  # no stray profiler files

    head, _, *ops = out.split("model.onnx in onnxruntime, batch 4")[1].strip().splitlines()
    assert str(trace) in head
    names, op_types = _node_names(os.path.join(digits_bundle.path, "model.onnx"))
    shares = []
    for line in ops:
        name, op, ms, share = line.split()
        assert name and float(ms) > 0
        shares.append(float(share.rstrip("%")))
    assert shares == sorted(shares, reverse=True) and 95 <= sum(shares) <= 100.5
    # a CNN's time is in its convolutions; ONNX Runtime names a fused Conv+Relu after the graph node it ends in
    top_name, top_op = ops[0].split()[:2]
    assert top_op in op_types and top_op == "Conv"
    assert any(top_name.startswith(n) for n in names if n), top_name


def test_profile_in_openvino_writes_its_per_layer_counters(digits_bundle, tmp_path, run_cli):
    pytest.importorskip("openvino")
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "openvino",
                             "--batch", "1", "--iterations", "10", "--no-progress", "--json", "--profile", tmp_path)
    assert code == 0, err
    json.loads(out)  # the profile went to stderr, stdout is still one JSON value
    layers = json.loads((tmp_path / "openvino-model.onnx-b1.json").read_text())["layers"]
    assert layers and all(layer["real_time_us_per_run"] >= 0 for layer in layers)
    assert "model.onnx in openvino, batch 1" in err and layers[0]["name"] in err


def test_profiles_of_openvino_in_f32_and_bf16_are_two_files(digits_bundle, tmp_path, run_cli):
    pytest.importorskip("openvino")
    from deploy.cpu_features import has_bf16

    if not has_bf16():
        pytest.skip("this CPU has no bf16: there is no openvino-bf16 runtime to profile")
    for runtime in ("openvino", "openvino-bf16"):
        code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", runtime,
                                 "--batch", "1", "--iterations", "5", "--no-progress", "--profile", tmp_path)
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("openvino*.json")) == ["openvino-bf16-model.onnx-b1.json",
                                                                       "openvino-model.onnx-b1.json"]
    assert "model.onnx in openvino-bf16, batch 1" in out


def test_the_bench_caption_names_the_leak_bound_the_soak_holds(digits_bundle, run_cli):
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "1", "--iterations", "3", "--no-progress", "--soak-max-growth-mb", "24")
    assert code == 0, err
    assert "LEAK? past 24 MB" in out and "8 MB" not in out


def test_a_short_soak_reports_no_memory_growth(digits_bundle, run_cli):
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "2", "--iterations", "5", "--no-progress", "--soak", "2")
    assert code == 0, err
    (line,) = [l for l in out.splitlines() if l.startswith("soak ")]
    assert "model.onnx in onnxruntime" in line and "bound 16 MB" in line
    growth = float(line.split("MB (")[1].split(" MB")[0])
    assert abs(growth) < 16


def test_a_soak_that_leaks_fails_with_one_sentence(digits_bundle, run_cli, monkeypatch):
    import deploy.registry

    real = deploy.registry.open_runner
    hoard = []

    class Leaky:
        def __init__(self, runner):
            self.runner, self.input_shape = runner, runner.input_shape

        def infer(self, batch):
            hoard.append(np.ones(1 << 17))  # 1 MB a call, touched so it is resident
            time.sleep(0.01)  # about 50 calls in the soak: a 50 MB leak, not one as fast as the model
            return self.runner.infer(batch)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.runner.close()

    monkeypatch.setattr(deploy.registry, "open_runner", lambda *a, **k: Leaky(real(*a, **k)))
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "1", "--iterations", "3", "--no-progress", "--soak", "0.5",
                             "--soak-max-growth-mb", "4")
    hoard.clear()
    assert code == 1
    (error,) = err.strip().splitlines()
    assert error.startswith("error: model.onnx in onnxruntime: resident memory grew") and "4 MB bound" in error


def test_nvtx_ranges_are_a_no_op_without_the_nvtx_package(digits_bundle, monkeypatch):
    import importlib
    import sys

    import deploy.nvtx_ranges
    from deploy.runners import OnnxRuntimeRunner

    monkeypatch.setitem(sys.modules, "nvtx", None)  # what a CPU-only device without the package has
    try:
        quiet = importlib.reload(deploy.nvtx_ranges)
        assert quiet._nvtx is None
        monkeypatch.setattr("deploy.registry.nvtx_range", quiet.nvtx_range)  # where Runner.infer finds it
        runner = OnnxRuntimeRunner(os.path.join(digits_bundle.path, "model.onnx"))
        np.testing.assert_allclose(runner.infer(digits_bundle.inputs[:3]), digits_bundle.torch_logits[:3],
                                   rtol=1e-4, atol=1e-4)
    finally:
        monkeypatch.undo()
        importlib.reload(deploy.nvtx_ranges)
