"""notebooks/walkthrough.ipynb runs end to end, as a reader runs it, and shows what its text promises."""

import json
import re
from pathlib import Path

import pytest

from edgecls_testing import printed_top1

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"


def test_committed_notebook_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the walkthrough has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"stored output in cell:\n{cell.source[:200]}"


def _text(cell) -> str:
    """Everything a reader sees under a code cell, as text (streams, results, the traceback of an error)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/markdown", out.data.get("text/plain", "")))
    return "".join(parts)


@pytest.mark.slow
def test_walkthrough_runs_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this environment: EDGECLS_REPO lets the notebook find main.py and deploy/ while it runs
    # in tmp_path, so runs/ (the fit, the digit PNGs, the Triton repository) lands there and not in the checkout.
    monkeypatch.setenv("EDGECLS_REPO", str(REPO))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    shown = "\n".join(_text(c) for c in code)

    # 1. the fit ran through main.py, ended with its test, and left one run with a bundle
    assert printed_top1(shown) >= 0.8, "the fit's test top-1 is too low"
    run = tmp_path / "runs" / "quickstart" / "version_0"
    bundle_dir = run / "bundle"
    assert (bundle_dir / "manifest.json").is_file() and (run / "config.yaml").is_file()

    # 2. TensorBoard scalars read back: one val/top1 per epoch and a gradient-norm series, with a plot
    assert re.findall(r"^epoch (\d) .*val/top1 [01]\.\d{4}$", shown, re.M) == ["0", "1", "2"]
    assert "per-parameter gradient norms" in shown and "tensorboard --logdir runs" in "".join(
        c.source for c in nb.cells if c.cell_type == "markdown")
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "expected the TensorBoard plot and report.png"

    # 3. the bundle: two ONNX artifacts, report table shown
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    shipped = [a["format"] for a in manifest["artifacts"] if a.get("status", "ok") == "ok"]  # engines: skipped here
    assert shipped == ["onnx", "onnx-int8", "onnx-int8"]
    for name in ("model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
        assert f"{name} " in shown
    assert "| INT8 TensorRT-form | model.int8.onnx | ONNX Runtime |" in shown and "deploy bundle report" in shown

    # 4. infer: one JSON line per image, mostly right; the Python API reproduces the report's top-1 exactly
    lines = [json.loads(line) for line in shown.splitlines() if line.startswith('{"file"')]
    assert len(lines) == 8
    right = sum(line["top"][0]["class"] == re.search(r"_true(\d)\.png$", line["file"]).group(1) for line in lines)
    assert right >= 6 and all(len(line["top"]) == 3 for line in lines)
    reproduced = re.findall(r"^(\S+)\s+top-1 ([0-9.]+) %  \(report: ([0-9.]+) %\)", shown, re.M)
    assert [name for name, _, _ in reproduced] == ["model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"]
    assert all(ours == report for _, ours, report in reproduced)
    assert "torch imported in this kernel: False" in shown

    # bench: every artifact in every CPU runtime here at batch 1 and 8, the one `--runtime auto` takes marked
    names = {"ONNX Runtime": "onnxruntime", "OpenVINO": "openvino", "OpenVINO bf16": "openvino-bf16"}
    rows = [(a, names[r], b) for a, r, b in re.findall(r"^(model\S*\.onnx)\s+(?:FP32|INT8 \S+)\s+"
                                                     r"(ONNX Runtime|OpenVINO bf16|OpenVINO)\s+(\d+)\s", shown, re.M)]
    from deploy.runners import RUNTIMES
    from deploy.selection import available_runtimes

    formats = {"model.onnx": "onnx", "model.int8.onnx": "onnx-int8", "model.int8-cpu.onnx": "onnx-int8"}
    runtimes = [r for r in available_runtimes() if r != "tensorrt"]
    # bf16 is offered only where the fit measured it faster than f32 (a 16 px network on a busy machine may not be)
    from deploy.selection import bf16_not_offered

    entries = {a["file"]: a for a in manifest["artifacts"]}
    offered = {(a, r) for a in formats for r in runtimes if formats[a] in RUNTIMES[r].formats
               and not (r == "openvino-bf16" and bf16_not_offered(entries[a]))}
    assert sorted(rows) == sorted((a, r, b) for a, r in offered for b in ("1", "8"))
    assert len(re.findall(r"^model\S*\.onnx\s.*\byes$", shown, re.M)) == 2  # the chosen pair, at both batch sizes

    # 5. Triton repository
    config = tmp_path / "runs" / "triton" / "quickstart" / "config.pbtxt"
    assert config.is_file() and (tmp_path / "runs" / "triton" / "quickstart" / "1" / "model.onnx").is_file()
    assert 'platform: "onnxruntime_onnx"' in shown and "dims: [ 3, 16, 16 ]" in shown
