"""A fit-end step of the user's own, added the way the README's "Add a fit-end step" shows: its file and its one line
in the recipe, beside the shared chain, no file of the project touched."""

import json

from edgecls_testing import REPO, TINY, readme_blocks, readme_recipe, run_main


def test_a_users_fit_end_step_is_one_file_and_one_yaml_line(tmp_path):
    (tmp_path / "size_budget.py").write_text(readme_blocks("Add a fit-end step")["python"])
    recipe = readme_recipe("Add a fit-end step", tmp_path)

    proc = run_main(["fit", "--config", recipe, *TINY, "--trainer.max_epochs", "1"], tmp_path,
                    env={"PYTHONPATH": f"{tmp_path}:{REPO}"})

    # listed after the shared chain (after DeployBundle), it ran before the bundle was written: its note is in it
    bundle = tmp_path / "runs" / "quickstart" / "version_0" / "bundle"
    report = json.loads((bundle / "report.json").read_text())
    (note,) = [n for n in report["notes"] if n[0] == "Size budget"]
    size_mb = (bundle / "model.onnx").stat().st_size / 1e6
    assert note[1] == f"model.onnx {size_mb:.3f} MB, budget 2.0 MB"
    assert "Size budget" in (bundle / "report.md").read_text()
    assert proc.returncode == 0 and not report["failures"]
