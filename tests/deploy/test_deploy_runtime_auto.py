"""OpenVINO runs the bundle's ONNX files as ONNX Runtime does, and `--runtime auto` picks the fastest runtime ×
artifact within the accuracy budget, measured once and cached beside the bundle."""

import json
import os

import numpy as np
import onnx
import pytest

from deploy import selection
from deploy.bundle import add_artifact, artifact_entry, load_bundle, read_manifest, write_manifest
from deploy.runners import OnnxRuntimeRunner, runner_for_file

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_openvino_agrees_with_onnx_runtime_on_the_digits_bundle_at_any_batch(digits_bundle, name, hint):
    path = os.path.join(digits_bundle.path, name)
    ov = runner_for_file(path, "onnx-int8" if "int8" in name else "onnx", runtime="openvino", threads=2, hint=hint)
    ort = OnnxRuntimeRunner(path)
    x = digits_bundle.inputs
    assert ov.input_shape == ort.input_shape and (ov.min_batch, ov.max_batch) == (1, None)
    for n in (1, 7, len(x)):  # dynamic batch, and THROUGHPUT splitting a batch over its requests
        ov_logits, ort_logits = ov.infer(x[:n]), ort.infer(x[:n])
        assert ov_logits.shape == ort_logits.shape == (n, 10)
        agree = (ov_logits.argmax(1) == ort_logits.argmax(1)).mean()
        assert agree == 1.0 if name == "model.onnx" else agree >= 0.95
    np.testing.assert_allclose(ov.infer(x), digits_bundle.torch_logits, atol=1e-4) if name == "model.onnx" else None


def with_metrics(bundle_dir, top1_by_file):
    """Test top-1s in the manifest, and no choice cached by earlier tests (the copy carries the session's)."""
    cache = os.path.join(bundle_dir, selection.CACHE_NAME)
    if os.path.exists(cache):
        os.unlink(cache)
    manifest = read_manifest(bundle_dir)
    for entry in manifest["artifacts"]:
        entry["metrics"] = {"top1": top1_by_file[entry["file"]]}
    write_manifest(bundle_dir, manifest)


def count_timings(monkeypatch):
    calls = []
    real = selection.time_candidates

    def counted(bundle, cands, *args, **kwargs):
        calls.append(sorted(c.key for c in cands))
        return real(bundle, cands, *args, **kwargs)

    monkeypatch.setattr(selection, "time_candidates", counted)
    return calls


def test_auto_measures_once_caches_beside_the_bundle_and_a_changed_sha_measures_again(bundle_copy, run_cli,
                                                                                        digits_bundle, monkeypatch):
    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.948})  # INT8 within 0.5 pt
    calls = count_timings(monkeypatch)
    code, out, err = run_cli("infer", "--bundle", bundle_copy, "--topk", "1", *digits_bundle.image_paths[:4])
    assert code == 0 and err == "" and len(out.splitlines()) == 4
    assert calls == [["onnxruntime:model.int8.onnx", "onnxruntime:model.onnx", "openvino:model.int8.onnx",
                      "openvino:model.onnx"]]
    cache = json.loads(open(os.path.join(bundle_copy, selection.CACHE_NAME)).read())
    (record,) = cache["choices"].values()
    timings = record["timings"]
    chosen = f"{record['chosen']['runtime']}:{record['chosen']['file']}"
    assert chosen == min(timings, key=timings.get) and record["identity"]["cpu"] == selection.cpu_model()

    code, _, _ = run_cli("infer", "--bundle", bundle_copy, "--topk", "1", digits_bundle.image_paths[0])
    assert code == 0 and len(calls) == 1  # the second call read the cache
    assert selection.resolve(load_bundle(bundle_copy), "auto", None, None, ["cpu"], None, None).source == "cache"

    # a re-quantized INT8 file (new bytes, new sha256 in the manifest) is a new candidate: measured again
    path = os.path.join(bundle_copy, "model.int8.onnx")
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"requantized": "yes"})
    onnx.save(model, path)
    add_artifact(bundle_copy, dict(artifact_entry(path, "onnx-int8", "int8"), metrics={"top1": 0.948}))
    code, _, _ = run_cli("infer", "--bundle", bundle_copy, "--topk", "1", digits_bundle.image_paths[0])
    assert code == 0 and len(calls) == 2


def test_auto_leaves_out_what_loses_more_than_the_budget(bundle_copy, monkeypatch):
    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.90})  # INT8 5 pt down
    calls = count_timings(monkeypatch)
    bundle = load_bundle(bundle_copy)
    choice = selection.resolve(bundle, "auto", None, None, ["cpu"], None, None)
    assert choice.entry["file"] == "model.onnx" and calls == [["onnxruntime:model.onnx", "openvino:model.onnx"]]
    wide = selection.resolve(bundle, "auto", None, None, ["cpu"], None, None, budget_pts=10.0)
    assert wide.source == "measured" and len(calls[-1]) == 4


def test_a_read_only_bundle_caches_under_the_user_cache_and_says_nothing(bundle_copy, run_cli, digits_bundle,
                                                                         monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    real = selection.atomic_write_json

    def read_only_bundle(path, obj):
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(bundle_copy):
            raise PermissionError(13, "Permission denied", path)
        return real(path, obj)

    monkeypatch.setattr(selection, "atomic_write_json", read_only_bundle)
    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.948})
    code, out, err = run_cli("infer", "--bundle", bundle_copy, "--topk", "1", digits_bundle.image_paths[0])
    assert code == 0 and err == "" and out
    assert not os.path.exists(os.path.join(bundle_copy, selection.CACHE_NAME))
    (cached,) = os.listdir(tmp_path / "home-cache" / "edgecls")
    assert cached.startswith("runtime-choice-")
    calls = count_timings(monkeypatch)
    assert selection.resolve(load_bundle(bundle_copy), "auto", None, None, ["cpu"], None, None).source == "cache"
    assert calls == []


def test_a_named_runtime_with_a_format_takes_the_file_meant_for_it(bundle_copy, run_cli, digits_bundle):
    # a CPU-form INT8 beside TensorRT's: CPU runtimes take it, and Triton on a GPU keeps TensorRT's
    cpu_path = os.path.join(bundle_copy, "model.int8-cpu.onnx")
    with open(os.path.join(bundle_copy, "model.int8.onnx"), "rb") as src, open(cpu_path, "wb") as dst:
        dst.write(src.read())
    manifest = read_manifest(bundle_copy)
    manifest["artifacts"][1]["runtime"] = "tensorrt"
    manifest["artifacts"].append(dict(artifact_entry(cpu_path, "onnx-int8", "int8"), runtime="cpu"))
    write_manifest(bundle_copy, manifest)
    bundle = load_bundle(bundle_copy)
    for runtime in ("onnxruntime", "openvino"):
        choice = selection.resolve(bundle, runtime, "onnx-int8", None, ["cpu"], None, None)
        assert choice.entry["file"] == "model.int8-cpu.onnx" and choice.runtime == runtime
    assert bundle.artifact("onnx-int8")["file"] == "model.int8.onnx"
    code, out, err = run_cli("infer", "--bundle", bundle_copy, "--format", "onnx-int8", "--runtime", "openvino",
                             "--topk", "1", *digits_bundle.image_paths[:3])
    assert code == 0 and err == "" and len(out.splitlines()) == 3
    code, out, err = run_cli("bench", "--bundle", bundle_copy, "--format", "onnx-int8", "--batch", "1",
                             "--iterations", "5", "--json", "--no-progress")
    rows = json.loads(out)
    assert code == 0 and {(r["artifact"], r["runtime"]) for r in rows} == {
        (f, r) for f in ("model.int8.onnx", "model.int8-cpu.onnx") for r in ("onnxruntime", "openvino")}
    assert sum(r["chosen"] for r in rows) == 1


def test_an_int8_file_that_missed_its_gate_is_never_chosen_by_auto_and_bench_says_so(bundle_copy, run_cli,
                                                                                     monkeypatch):
    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.95})  # within the budget on test...
    manifest = read_manifest(bundle_copy)
    next(e for e in manifest["artifacts"] if e["file"] == "model.int8.onnx")["gate"] = "not met"  # ...not on val
    write_manifest(bundle_copy, manifest)
    calls = count_timings(monkeypatch)
    choice = selection.resolve(load_bundle(bundle_copy), "auto", None, None, ["cpu"], None, None)
    assert choice.entry["file"] == "model.onnx"
    assert calls == [["onnxruntime:model.onnx", "openvino:model.onnx"]]  # the missed file was never a candidate
    named = selection.resolve(load_bundle(bundle_copy), "onnxruntime", "onnx-int8", None, ["cpu"], None, None)
    assert named.entry["file"] == "model.int8.onnx"  # asked for by name, it runs
    code, out, err = run_cli("bench", "--bundle", bundle_copy, "--runtime", "onnxruntime", "--iterations", "2")
    assert code == 0, err
    header, _, *rows = out.strip().splitlines()
    assert "INT8 gate" in header
    assert any("model.int8.onnx" in r and "not met" in r for r in rows), out


def test_infer_says_which_file_and_runtime_it_uses_and_why(bundle_copy, digits_bundle, capsys):
    from deploy.__main__ import main

    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.948})
    assert main(["infer", "--bundle", bundle_copy, "--runtime", "onnxruntime", "--format", "onnx",
                 digits_bundle.image_paths[0]]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "using model.onnx in onnxruntime: the only one that fits the flags"
    assert main(["infer", "--bundle", bundle_copy, digits_bundle.image_paths[0]]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("using model") and "the fastest measured here just now (cached in " in first
    assert main(["infer", "--bundle", bundle_copy, digits_bundle.image_paths[0]]) == 0
    assert "the fastest measured here (cached in " in capsys.readouterr().err.splitlines()[0]


def test_auto_on_tensorrts_int8_file_where_fused_kernels_saturate_says_so_in_its_using_line(
        bundle_copy, digits_bundle, capsys, monkeypatch):
    from deploy import cpu_features
    from deploy.__main__ import main

    monkeypatch.setattr(cpu_features, "cpu_family_name", lambda machine=None: "x86_64")
    monkeypatch.setattr(cpu_features, "has_vnni", lambda flags=None: False)  # AVX2 without VNNI, a Zen 3
    with_metrics(bundle_copy, {"model.onnx": 0.95, "model.int8.onnx": 0.948})
    assert main(["infer", "--bundle", bundle_copy, "--runtime", "onnxruntime", "--format", "onnx-int8",
                 digits_bundle.image_paths[0]]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["using model.int8.onnx in onnxruntime with its Q/DQ as written (this CPU's fused int8 kernels "
                   "saturate on TensorRT's form; model.int8-cpu.onnx is the INT8 file made for this CPU): the only "
                   "one that fits the flags"], err
