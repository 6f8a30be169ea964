"""README's "Add a backbone", done as it shows: its Python file written into a folder of its own, its YAML lines in a
config, `python main.py fit --config ...`; nothing of the project is edited."""

from __future__ import annotations


import torch
import yaml

from edgecls_testing import REPO, printed_top1, readme_blocks, run_main


def test_a_backbone_in_a_file_of_its_own_trains_when_the_yaml_names_it(tmp_path):
    blocks = readme_blocks("Add a backbone")
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "my_backbones.py").write_text(blocks["python"])
    config = {
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 2,
                    "enable_progress_bar": False, "callbacks": []},  # no fit-end steps: the backbone is the point
        "model": {**yaml.safe_load(blocks["yaml"])["model"], "optimizer": {"class_path": "torch.optim.AdamW",
                                                                         "init_args": {"lr": 0.01}}},
        "data": {"source": "DigitsSource", "image_size": 16, "batch_size": 32, "cache_dir": str(tmp_path / "cache")},
    }
    recipe = tmp_path / "tiny_cnn.yaml"
    recipe.write_text(yaml.safe_dump(config))

    proc = run_main(["fit", "--config", recipe], tmp_path, env={"PYTHONPATH": f"{user}:{REPO}"})

    assert "my_backbones.tiny_cnn: " in proc.stderr + proc.stdout  # the parameter-count line names it
    best = next((tmp_path / "runs" / "tiny_cnn" / "version_0" / "checkpoints").glob("epoch*.ckpt"))
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"] == "my_backbones.tiny_cnn"
    shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    assert shapes["net.0.weight"] == (8, 3, 3, 3) and shapes["net.fc.weight"] == (10, 8)  # width 8, 10 digits
    printed_top1(proc.stdout)  # the fit ended with its test


def test_a_module_that_registers_no_such_backbone_is_one_sentence(tmp_path):
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "my_backbones.py").write_text("")
    proc = run_main(["fit", "--config", REPO / "experiments" / "quickstart.yaml", "--model.backbone",
                     "my_backbones.tiny_cnn", "--model.backbone_args", "{}"], tmp_path,
                    expect_ok=False, env={"PYTHONPATH": f"{user}:{REPO}"})
    assert proc.returncode == 2
    assert "registers no backbone 'tiny_cnn'" in proc.stderr and "@register_backbone('tiny_cnn')" in proc.stderr
