"""OpenVINO's own IR in the bundle: the CPU recipes' fit-end chain (experiments/fit_end/minmax.yaml plus
callbacks.OpenVinoIR, as mobilenetv3_small_digits.yaml lists it) run end to end once on the quickstart recipe, shrunk to seconds, writes the FP32 IR and NNCF's INT8 IR beside the ONNX files,
measured in OpenVINO on the test split; `deploy infer` and `deploy bench` run them, `--runtime auto` weighs them, and
an IR's .bin travels and is checked with its .xml. (mobilenetv3_small_digits.yaml, which ships the chain, runs end to
end in tests/lightning_modules/test_zoo_recipes.py, marked slow.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the recipe tests' shared helpers

from deploy.bundle import load_bundle  # noqa: E402
from edgecls_testing import EXPERIMENTS, TINY, load_recipe, run_main  # noqa: E402
from recipe_helpers import FAST_CLI, check_bundle, measured_quickly, shrunk_recipe  # noqa: E402

IR_FILES = ("model.openvino.xml", "model.int8.openvino.xml")


@pytest.fixture(scope="module")
def ir_fit(tmp_path_factory):
    """quickstart.yaml with the CPU recipes' chain, shrunk to seconds (the shared TINY fit: a width-4 ResNet at 16 px,
    8 batches an epoch), 2 epochs, 64 calibration images."""
    import yaml

    tmp = tmp_path_factory.mktemp("openvino_ir")
    chain = load_recipe(EXPERIMENTS / "mobilenetv3_small_digits.yaml")["trainer"]["callbacks"]
    recipe = measured_quickly(shrunk_recipe(tmp, "quickstart.yaml", {
        "trainer": {"max_epochs": 2, "callbacks": chain},
    }, callbacks={"callbacks.Int8Quantization": {"num_samples": 64, "max_drop": 100.0},
                  "callbacks.OpenVinoIR": {"num_samples": 64, "max_drop": 100.0}}))
    run_main(["fit", "--config", recipe, *TINY, *FAST_CLI], tmp)
    return tmp / "runs" / "quickstart" / "version_0", recipe


def deploy(capsys, *args) -> tuple[int, str, str]:
    from deploy.__main__ import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cpu_recipe_ships_the_ir_and_nncf_int8_measured_in_openvino(ir_fit):
    run, recipe = ir_fit
    report = check_bundle(run, recipe, [str(d) for d in range(10)], [16, 16])
    bundle = load_bundle(run / "bundle", verify=True)  # the .bin files' sha256 too
    by_file = {a["file"]: a for a in bundle.artifacts}
    for xml in IR_FILES:
        entry = by_file[xml]
        assert [c["file"] for c in entry["companions"]] == [xml[:-4] + ".bin"]
        assert (run / "bundle" / entry["companions"][0]["file"]).stat().st_size == entry["companions"][0]["bytes"] > 0
        assert entry["runtime"] == "openvino" and entry["metrics"]["top1"] > 0
    assert by_file["model.openvino.xml"]["form"] == "FP32 OpenVINO IR"
    int8 = by_file["model.int8.openvino.xml"]
    assert int8["form"] == "INT8 OpenVINO IR (NNCF)" and int8["gate"] == "met"
    q = int8["quantization"]
    # a ReLU network: NNCF's performance preset (symmetric activations); MobileNetV3's HSwish would make it mixed
    assert q["preset"] == "performance" and q["signed_activations"] == [] and q["num_samples"] == 64
    assert q["target_device"] == "CPU" and q["attempts"][0]["fast_bias_correction"] is True
    # the INT8 IR's weights are int8: its .bin is under half the FP32 IR's
    assert int8["companions"][0]["bytes"] < 0.5 * by_file["model.openvino.xml"]["companions"][0]["bytes"]
    # each IR is one row of the fit-end table, measured in OpenVINO, with its .bin counted in its size
    rows = {r["file"]: r for r in report["rows"] if r["file"] in IR_FILES}
    assert {r["runtime"] for r in rows.values()} == {"openvino"} and len(rows) == 2
    # under the table: which CPU INT8 path was fastest and which most accurate here
    assert "CPU INT8 paths here: fastest " in (run / "bundle" / "report.md").read_text()
    assert rows["model.int8.openvino.xml"]["size_mb"] == pytest.approx(
        (int8["bytes"] + int8["companions"][0]["bytes"]) / 1e6)


def test_deploy_infer_and_bench_run_the_ir_and_auto_weighs_it(ir_fit, tmp_path, capsys):
    run, _ = ir_fit
    bundle_dir = run / "bundle"
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(4):
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(tmp_path / f"{i}_label{digits.target[i]}.png")
    code, out, err = deploy(capsys, "infer", "--bundle", bundle_dir, "--runtime", "openvino", "--format", "openvino-ir",
                            "--precision", "int8", "--topk", "1", tmp_path)
    assert code == 0, err
    assert "model.int8.openvino.xml" in err and len([line for line in out.splitlines() if ".png" in line]) == 4
    code, out, err = deploy(capsys, "bench", "--bundle", bundle_dir, "--format", "openvino-ir", "--batch", "1",
                            "--iterations", "3", "--warmup", "1", "--json", "--no-progress")
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["artifact"], r["runtime"], r["form"]) for r in rows} == {
        ("model.openvino.xml", "openvino", "FP32 OpenVINO IR"),
        ("model.int8.openvino.xml", "openvino", "INT8 OpenVINO IR (NNCF)")}
    # --runtime auto: the IR files in OpenVINO are candidates beside the ONNX files, and the fastest one wins
    from deploy.selection import candidates, choose

    bundle = load_bundle(bundle_dir)
    keys = {c.key for c in candidates(bundle)}
    assert {"openvino:model.int8.openvino.xml", "openvino:model.openvino.xml", "onnxruntime:model.int8-cpu.onnx"} <= keys
    timings = {key: 5.0 for key in keys}
    timings["openvino:model.int8.openvino.xml"] = 1.0
    choice = choose(bundle, timings=timings, budget_pts=100.0)
    assert (choice.runtime, choice.entry["file"]) == ("openvino", "model.int8.openvino.xml")


def test_an_ir_without_its_bin_is_one_sentence_and_install_copies_the_bin(ir_fit, tmp_path, capsys):
    run, _ = ir_fit
    from deploy.install import bundle_files
    from deploy.bundle import read_manifest

    copied = tmp_path / "bundle"
    shutil.copytree(run / "bundle", copied)
    assert {"model.openvino.bin", "model.int8.openvino.bin"} <= set(bundle_files(str(copied), read_manifest(copied)))
    (copied / "model.int8.openvino.bin").unlink()
    code, out, err = deploy(capsys, "bench", "--bundle", copied, "--format", "openvino-ir", "--batch", "1",
                            "--iterations", "2", "--no-progress")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "model.int8.openvino.bin" in lines[0] and "copy the whole bundle folder again" in lines[0]


def test_a_missed_gate_walks_nncfs_settings_one_change_at_a_time_and_ships_the_most_accurate(tmp_path):
    """OpenVinoIR.quantize on a small depthwise network, val top-1 scripted per attempt: NNCF's defaults, then its
    full bias correction, the mixed preset, global min/max activation ranges, and those with the depthwise
    convolutions kept in FP32; the most accurate attempt ships (here the fourth), under the INT8 file's own name,
    and the other attempts' files are gone."""
    import openvino as ov
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from callbacks.openvino_ir import INT8_FILE, OpenVinoIR

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    model = ov.convert_model(net, example_input=torch.zeros(1, 3, 16, 16))
    images = TensorDataset(torch.randn(32, 3, 16, 16), torch.zeros(32, dtype=torch.long))

    class Data:
        def calibration_dataloader(self, n, batch_size):
            return DataLoader(images, batch_size=batch_size)

    scripted = iter([0.50, 0.52, 0.40, 0.80, 0.70])  # val top-1 of each attempt; FP32 0.90, a 0.5 pt gate
    step = OpenVinoIR(num_samples=32)
    step.staging = tmp_path
    r = step.quantize(model, Data(), 0.90, lambda xml: next(scripted))
    assert [(a["preset"], a["fast_bias_correction"], a["activation_ranges"], a["fp32_types"]) for a in r["attempts"]] == [
        ("performance", True, "nncf", []), ("performance", False, "nncf", []), ("mixed", False, "nncf", []),
        ("performance", False, "minmax", []), ("performance", False, "minmax", ["GroupConvolution"])]
    assert r["int8_top1"] == 0.80 and r["activation_ranges"] == "minmax" and r["fp32_types"] == []
    assert not r["gate_met"] and r["delta_pts"] == pytest.approx(-10.0) and r["tries"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [INT8_FILE[:-4] + ".bin", INT8_FILE]
    # the last attempt's setting reaches NNCF: the depthwise convolution's input is left unquantized
    from callbacks.openvino_ir import DEPTHWISE, SingleImages, nncf_int8

    def fake_quantizers(m):
        return sum(op.get_type_name() == "FakeQuantize" for op in m.get_ops())

    calibration = SingleImages(Data().calibration_dataloader(32, 8))
    plain, kept = (nncf_int8(model, calibration, 32, "performance", False, "minmax", types) for types in ((), DEPTHWISE))
    assert fake_quantizers(kept) < fake_quantizers(plain)
