"""A fit-end step of the user's own, added the way the README's "Add a fit-end step" shows: one file and one line
in the experiment YAML, no file of the project touched."""

import json

import yaml

from edgecls_testing import EXPERIMENTS, TINY, error_lines, load_recipe, run_main

# The README's example, as a user would save it next to their experiment.
SIZE_BUDGET = '''
from callbacks import FitEndStep


class SizeBudget(FitEndStep):
    """Fails the fit (exit 1; the bundle is still written) when the FP32 ONNX file is over a device's budget."""

    def __init__(self, max_mb: float) -> None:
        super().__init__()
        self.max_mb = max_mb

    def consumes(self):
        return ("onnx:fp32",)

    def run(self, trainer, pl_module, record):
        size_mb = record.find("onnx", "fp32").file.stat().st_size / 1e6
        record.note(self.name, "Size budget", f"model.onnx {size_mb:.3f} MB, budget {self.max_mb} MB")
        if size_mb > self.max_mb:
            raise RuntimeError(f"model.onnx is {size_mb:.3f} MB, over the {self.max_mb} MB budget; "
                               "try a smaller width or StructuredPruning")
'''


def test_a_users_fit_end_step_is_one_file_and_one_yaml_line(tmp_path):
    (tmp_path / "size_budget.py").write_text(SIZE_BUDGET)
    config = load_recipe(EXPERIMENTS / "quickstart.yaml")
    steps = config["trainer"]["callbacks"]
    keep = ("callbacks.ONNXExport", "callbacks.DeployBundle")
    steps[:] = [s for s in steps if s["class_path"] in keep]
    steps.insert(1, {"class_path": "size_budget.SizeBudget", "init_args": {"max_mb": 0.001}})  # the one line
    steps[-1]["init_args"] = {"latency_iterations": 5, "throughput_iterations": 1}
    recipe = tmp_path / "budget.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))

    proc = run_main(["fit", "--config", recipe, *TINY, "--trainer.max_epochs", "1"], tmp_path, expect_ok=False,
                    env={"PYTHONPATH": f"{tmp_path}:{EXPERIMENTS.parent}"})

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: fit-end step failed: SizeBudget: model.onnx is ") and "0.001 MB budget" in line
    bundle = tmp_path / "runs" / "quickstart" / "version_0" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"] if a["status"] == "ok"] == ["model.onnx"]
    report = json.loads((bundle / "report.json").read_text())
    assert any(note[0] == "Size budget" and "budget 0.001 MB" in note[1] for note in report["notes"])
    assert report["failures"] and report["failures"][0].startswith("SizeBudget: model.onnx is ")
