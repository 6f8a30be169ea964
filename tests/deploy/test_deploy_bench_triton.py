"""`bench` prints every column for every artifact and catches no leak; `triton` writes a repository Triton
can parse."""

import json
import os

import pytest

from deploy.benchmark import measure
from deploy.bundle import load_bundle, sha256_file
from deploy.runners import OnnxRuntimeRunner

COLUMNS = ["artifact", "form", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "size MB", "test top-1 %",
           "INT8 gate", "peak RSS MB", "RSS growth MB", "memory", "auto picks"]


def table_cells(line: str, rule: str) -> list[str]:
    """A table line cut at its rule's dashes: cells may hold spaces ("ONNX Runtime", "INT8 TensorRT-form")."""
    spans, start = [], 0
    for dashes in rule.split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    return [line[a:b].strip() for a, b in spans]


def test_bench_table_has_a_row_per_runtime_artifact_and_batch_and_marks_the_auto_choice(digits_bundle, run_cli):
    from deploy.runners import RUNTIMES
    from deploy.selection import available_runtimes

    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--batch", "1,4", "--iterations", "30",
                             "--warmup", "3", "--threads", "1")
    assert code == 0, err
    caption, header, rule, *rows = out.strip().splitlines()
    # one caption line says what the columns mean: where, per call of `batch` images, where top-1 comes from,
    # what peak RSS counts, what auto picks means
    assert caption.startswith("Measured here on ") and "(1 thread)" in caption
    assert "one call of `batch` images (30 timed calls; per image: divide by batch)" in caption
    assert "test top-1 % and INT8 gate: the manifest's, measured at fit end" in caption
    assert "the whole bench process's resident memory" in caption and "auto picks = the row `--runtime auto` runs here" in caption
    assert "<-" not in out
    assert table_cells(header, rule) == COLUMNS
    assert set(rule.replace(" ", "")) == {"-"}
    # openvino-bf16 is offered only where the fit-end table measured it faster than f32; this manifest has no
    # such measurement (deploy.selection.bf16_not_offered), so bench says so in one line instead of a row
    runtimes = [r for r in available_runtimes() if r not in ("tensorrt", "openvino-bf16")]
    assert ("OpenVINO bf16 is not offered for model.onnx" in err) == ("openvino-bf16" in available_runtimes())
    names = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "openvino-bf16": "OpenVINO bf16"}
    forms = {"model.onnx": "FP32", "model.int8.onnx": "INT8 TensorRT-form"}
    formats = {"model.onnx": "onnx", "model.int8.onnx": "onnx-int8"}  # openvino-bf16 reads the FP32 file only
    expected = [(artifact, names[runtime], batch) for artifact in formats for runtime in runtimes
                if formats[artifact] in RUNTIMES[runtime].formats for batch in (1, 4)]
    assert len(rows) == len(expected)
    marked, batch1 = set(), {}
    for row, (artifact, runtime, batch) in zip(rows, expected):
        cells = table_cells(row, rule)
        assert cells[:4] == [artifact, forms[artifact], runtime, str(batch)]
        assert cells[8] == f"{os.path.getsize(os.path.join(digits_bundle.path, artifact)) / 1e6:.2f}"
        p50, p90, p99, throughput = map(float, cells[4:8])
        assert 0 < p50 <= p90 <= p99 and throughput > 0
        assert cells[9] == "-"  # this bundle's manifest has no test metrics
        assert cells[10] == "-"  # nor a gate verdict
        assert float(cells[11]) > 10  # the process's resident memory: interpreter, runtime and model
        assert cells[13] == "ok"
        assert cells[14] in ("yes", "")
        if cells[14] == "yes":
            marked.add((artifact, runtime))
        if batch == 1:
            batch1[(artifact, runtime)] = p50
    # Without test metrics INT8 is outside the accuracy budget: auto picks the FP32 file in the runtime with the
    # lowest batch-1 p50 of this very run
    best = min(v for k, v in batch1.items() if k[0] == "model.onnx")
    assert len(marked) == 1 and batch1[next(iter(marked))] == best and next(iter(marked))[0] == "model.onnx"


def test_bench_json_is_machine_readable(digits_bundle, run_cli):
    code, out, _ = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx-int8", "--runtime", "onnxruntime",
                           "--batch", "2",
                           "--iterations", "10", "--json", "--no-progress")
    assert code == 0
    (row,) = json.loads(out)
    assert row["artifact"] == "model.int8.onnx" and row["batch"] == 2 and row["iterations"] == 10
    assert (row["form"], row["runtime"]) == ("INT8 TensorRT-form", "onnxruntime")
    assert {"p50_ms", "p90_ms", "p99_ms", "throughput", "size_mb", "rss_growth_mb", "memory_ok"} <= set(row)
    # MB is 10^6 bytes here as everywhere in the project (the report's size column too)
    assert row["size_mb"] == pytest.approx(os.path.getsize(os.path.join(digits_bundle.path, "model.int8.onnx")) / 1e6)


def test_bench_with_warmup_0_still_measures(digits_bundle, run_cli):
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "1", "--iterations", "5", "--warmup", "0", "--json", "--no-progress")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["iterations"] == 5 and row["p50_ms"] > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux /proc")
def test_rss_is_reported_in_mb_of_10_to_the_6_bytes():
    from deploy.benchmark import rss_mb

    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    # MiB would read 4.9 % lower; two reads a moment apart differ by far less than 1 %
    assert rss_mb() == pytest.approx(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6, rel=0.01)


def test_no_resident_memory_growth_over_1000_iterations(digits_bundle):
    runner = OnnxRuntimeRunner(os.path.join(digits_bundle.path, "model.onnx"), threads=1)
    result = measure(runner, batch_size=8, iterations=1000, warmup=20)
    assert result["memory_ok"], f"resident memory grew {result['rss_growth_mb']:.1f} MB over 1000 iterations"
    assert abs(result["rss_growth_mb"]) < 8.0


def test_triton_repository_parses_and_names_the_right_dims(digits_bundle, run_cli, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] is needed to parse Triton's config.pbtxt")
    from google.protobuf import text_format

    out = tmp_path / "repo"
    code, stdout, err = run_cli("triton", "--bundle", digits_bundle.path, "--out", out, "--max-batch-size", "16")
    assert code == 0, err
    model_dir = out / "digits-tiny"
    assert stdout.strip() == str(model_dir)
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "digits-tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [("input", [3, 14, 14], model_config_pb2.TYPE_FP32)]
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [("logits", [10], "labels.txt")]
    assert config.HasField("dynamic_batching") and list(config.dynamic_batching.preferred_batch_size) == [1, 8, 16]
    assert (model_dir / "labels.txt").read_text().split() == digits_bundle.classes
    bundle = load_bundle(digits_bundle.path)
    assert sha256_file(model_dir / "1" / "model.onnx") == bundle.artifact("onnx")["sha256"]


def test_triton_tensorrt_config_follows_the_engine_profile(bundle_copy, run_cli, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] is needed to parse Triton's config.pbtxt")
    from google.protobuf import text_format

    from deploy.bundle import add_artifact, artifact_entry
    from deploy.engine import write_sidecar

    # The engine bytes are never loaded by this command, so a placeholder stands in for a real build.
    engine = os.path.join(bundle_copy, "model.fp16.engine")
    open(engine, "wb").write(b"placeholder engine")
    write_sidecar(engine, {"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
                           "precision": "fp16", "output": "logits",
                           "profile": {"input": "input", "min": [1, 3, 14, 14], "opt": [4, 3, 14, 14], "max": [8, 3, 14, 14]}})
    add_artifact(bundle_copy, artifact_entry(engine, "tensorrt", "fp16"))
    code, _, err = run_cli("triton", "--bundle", bundle_copy, "--out", tmp_path / "repo", "--format", "tensorrt",
                           "--name", "digits_trt", "--instance-kind", "gpu")
    assert code == 0, err
    text = (tmp_path / "repo" / "digits_trt" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "digits_trt" / "1" / "model.plan").read_bytes() == b"placeholder engine"
    code, _, err = run_cli("triton", "--bundle", bundle_copy, "--out", tmp_path / "repo2", "--format", "tensorrt",
                           "--max-batch-size", "64")
    assert code == 2 and "exceeds the engine's optimization profile max 8" in err
