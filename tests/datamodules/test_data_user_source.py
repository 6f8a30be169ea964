"""A user's own data source, added the way the README shows: its file and its YAML in the folder the command runs
in, `python main.py fit --config ... --config my_stripes.yaml`, no launcher script and no project file touched."""

from __future__ import annotations

import json

import torch

from edgecls_testing import EXPERIMENTS, NO_FIT_END, REPO, TINY, readme_blocks, run_main


def test_a_users_source_from_the_readme_trains_from_yaml_alone(tmp_path):
    blocks = readme_blocks("Add your own data source")
    (tmp_path / "my_sources.py").write_text(blocks["python"])
    (tmp_path / "my_stripes.yaml").write_text(blocks["yaml"])
    command = blocks["bash"].split()
    assert command[:3] == ["python", "main.py", "fit"]
    args = [str(REPO / a) if a.startswith("experiments/") else a for a in command[3:]]
    assert args == ["--config", str(EXPERIMENTS / "quickstart.yaml"), "--config", "my_stripes.yaml"]

    proc = run_main(["fit", *args, *TINY, *NO_FIT_END, "--trainer.max_epochs", "1"], tmp_path)
    assert "data: StripesSource, 2 classes, train 180, val 60, test 60" in proc.stdout + proc.stderr
    run = tmp_path / "runs" / "stripes" / "version_0"  # the YAML's experiment: not filed among the quickstart's runs
    assert not (tmp_path / "runs" / "quickstart").exists()
    rows = [json.loads(line) for line in (run / "split" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and {r["class"] for r in rows} == {"horizontal", "vertical"}
    assert "class_path: my_sources.StripesSource" in (run / "config.yaml").read_text()
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["num_classes"] == 2  # the head was sized from the source's classes
    assert state["datamodule_hyper_parameters"]["source"] == "StripesSource"


def test_a_users_source_refuses_a_bad_option_in_its_own_sentence(tmp_path):
    blocks = readme_blocks("Add your own data source")
    (tmp_path / "my_sources.py").write_text(blocks["python"])
    (tmp_path / "my_stripes.yaml").write_text(blocks["yaml"].replace("count: 300", "count: 3"))
    proc = run_main(["fit", "--config", EXPERIMENTS / "quickstart.yaml", "--config", "my_stripes.yaml"], tmp_path,
                    expect_ok=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: StripesSource needs count >= 10 and width >= 1, got 3 and "
                                                    "2; raise data.source.count or data.source.width")
    assert not (tmp_path / "runs").exists()  # nothing of a run is left behind
