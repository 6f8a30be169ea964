"""OpenVINO set for the CPU it runs on: threads = the physical cores this process may use, the latency hint
at batch 1 and the throughput hint for batches, FP32 kept exact, and a bf16 run of the FP32 file (where the CPU
computes in bf16) that `--runtime auto` picks only within --max-drop of FP32, judged by its own top-1."""

import json
import os

import numpy as np
import pytest

from deploy import selection
from deploy.bundle import load_bundle, read_manifest, write_manifest
from deploy.cpu_features import has_bf16, physical_cores, usable_cpus
from deploy.runners import runner_for_file

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")
needs_bf16 = pytest.mark.skipif(not has_bf16(), reason="this CPU has no native bf16 (AVX512_BF16, AMX or Arm BF16)")


def fake_topology(root, cores_of_cpu):
    """/sys/devices/system/cpu/cpuN/topology as the kernel writes it: package and core id per logical CPU."""
    for cpu, core in cores_of_cpu.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text("0\n")
        (folder / "core_id").write_text(f"{core}\n")
    return str(root / "cpu{}" / "topology" / "{}")


def test_physical_cores_fold_smt_siblings_and_follow_the_affinity_mask(tmp_path):
    topology = fake_topology(tmp_path, {0: 0, 1: 1, 2: 0, 3: 1})  # 2 cores, 2 threads each (cpu2 is cpu0's sibling)
    assert physical_cores([0, 1, 2, 3], topology) == 2
    assert physical_cores([0, 2], topology) == 1  # a container pinned to both threads of one core
    assert physical_cores([1, 2], topology) == 2
    assert 1 <= physical_cores() <= len(usable_cpus()) == len(os.sched_getaffinity(0))


def test_openvino_runs_on_the_usable_physical_cores_latency_at_batch_1_throughput_for_batches(digits_bundle):
    x = digits_bundle.inputs
    with runner_for_file(os.path.join(digits_bundle.path, "model.onnx"), "onnx", runtime="openvino") as runner:
        runner.infer(x[:1])
        runner.infer(x[:16])
        settings = runner.compiled_settings()
    cores = physical_cores()
    assert [(s["batch"], s["hint"], s["threads"], s["precision"]) for s in settings] == [
        (1, "latency", cores, "f32"), (None, "throughput", cores, "f32")]
    assert settings[0]["streams"] == 1
    with runner_for_file(os.path.join(digits_bundle.path, "model.onnx"), "onnx", runtime="openvino", threads=1,
                         hint="latency") as runner:
        runner.infer(x[:5])
        assert [(s["hint"], s["threads"]) for s in runner.compiled_settings()] == [("latency", 1), ("latency", 1)]



def test_further_openvino_properties_and_the_async_call_give_the_same_logits_and_bad_ones_fail_at_open(digits_bundle):
    from deploy.bundle import BundleError
    from deploy.runtimes.openvino import OpenVinoRunner

    path = os.path.join(digits_bundle.path, "model.onnx")
    x = digits_bundle.inputs[:4]
    plain = OpenVinoRunner(path, threads=1)
    with OpenVinoRunner(path, threads=1, properties={"ENABLE_CPU_PINNING": "YES"}) as runner:
        np.testing.assert_allclose(runner.infer(x), plain.infer(x), rtol=1e-5, atol=1e-5)
        assert runner.compiled_settings()[0]["threads"] == 1
        assert all(c.get_property("ENABLE_CPU_PINNING") for c in (r.get_compiled_model()
                                                                 for r in runner._latency.values()))
    with OpenVinoRunner(path, threads=1, call="async") as runner:  # start_async + wait: the same logits
        np.testing.assert_allclose(runner.infer(x), plain.infer(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(BundleError, match="OpenVINO cannot compile it"):
        OpenVinoRunner(path, properties={"NO_SUCH_PROPERTY": "1"})
    with pytest.raises(BundleError, match="call style 'later' is not one of"):
        OpenVinoRunner(path, call="later")

@needs_bf16
def test_the_bf16_runtime_computes_in_bf16_while_openvino_fp32_stays_exact(digits_bundle):
    path, x = os.path.join(digits_bundle.path, "model.onnx"), digits_bundle.inputs
    with runner_for_file(path, "onnx", runtime="openvino") as fp32, \
            runner_for_file(path, "onnx", runtime="openvino-bf16") as bf16:
        exact, rounded = fp32.infer(x), bf16.infer(x)
        assert {s["precision"] for s in bf16.compiled_settings()} == {"bf16"}
    np.testing.assert_allclose(exact, digits_bundle.torch_logits, atol=1e-4)
    assert np.abs(rounded - exact).max() > 1e-3  # it really ran in bf16: 8 mantissa bits show in the logits
    assert (rounded.argmax(1) == exact.argmax(1)).mean() >= 0.97


def scored(bundle_dir, fp32_top1, bf16_top1=None):
    """The manifest as a fit leaves it: test top-1s, the f32 and bf16 runs' latencies (bf16 measured faster, so it
    is offered: deploy.selection.bf16_not_offered), and the bf16 run's own top-1 where it was measured."""
    manifest = read_manifest(bundle_dir)
    for entry in manifest["artifacts"]:
        entry["metrics"] = {"top1": fp32_top1 if entry["file"] == "model.onnx" else fp32_top1 - 0.05}
        if entry["file"] == "model.onnx":
            bf16 = {"precision": "bf16", "latency_ms": 0.5, **({"top1": bf16_top1} if bf16_top1 is not None else {})}
            entry["runtime_metrics"] = {"openvino-bf16": bf16, "openvino": {"precision": "fp32", "latency_ms": 1.0, "top1": fp32_top1}}
    write_manifest(bundle_dir, manifest)
    return load_bundle(bundle_dir)


@needs_bf16
@pytest.mark.parametrize("bf16_top1, max_drop, picked", [(0.94, 0.5, False), (0.94, 1.5, True), (0.949, 0.5, True),
                                                         (None, 50.0, False)])
def test_auto_picks_bf16_only_within_max_drop_of_fp32(bundle_copy, bf16_top1, max_drop, picked):
    bundle = scored(bundle_copy, 0.95, bf16_top1)
    cands = selection.candidates(bundle)
    assert "openvino-bf16:model.onnx" in [c.key for c in cands]
    timings = {c.key: (0.1 if c.runtime == "openvino-bf16" else 1.0 + i) for i, c in enumerate(cands)}  # bf16 fastest
    choice = selection.choose(bundle, budget_pts=max_drop, timings=timings)
    assert (choice.runtime == "openvino-bf16") is picked
    if not picked:
        assert choice.key == min((k for k in timings if not k.startswith("openvino-bf16")), key=timings.get)


@needs_bf16
def test_bench_shows_the_bf16_row_with_its_own_test_accuracy(bundle_copy, run_cli):
    scored(bundle_copy, 0.95, 0.946)
    code, out, _ = run_cli("bench", "--bundle", bundle_copy, "--format", "onnx", "--batch", "1", "--iterations", "3",
                           "--warmup", "1", "--no-progress", "--json")
    assert code == 0
    rows = {row["runtime"]: row for row in json.loads(out)}
    assert rows["openvino-bf16"]["precision"] == "bf16" and rows["openvino-bf16"]["test_top1"] == pytest.approx(94.6)
    assert rows["openvino"]["precision"] == "fp32" and rows["openvino"]["test_top1"] == pytest.approx(95.0)
