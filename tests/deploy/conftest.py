"""A real bundle made once per session: a tiny CNN trained on sklearn's digits, exported to ONNX (FP32 and
Q/DQ INT8), with labels and a manifest written through deploy.bundle, plus held-out digits as PNG files."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from bundle_factory import digits_uint8, export_onnx, quantize_int8, tiny_cnn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELD_OUT = 40


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    import torch

    from datamodules.presets import Preprocessing, build_eval_transform
    from deploy.bundle import artifact_entry, new_manifest, write_labels, write_manifest

    torch.manual_seed(0)
    images, labels = digits_uint8()
    pre = Preprocessing(resize=[16, 16], crop=[14, 14], interpolation="bilinear",
                        mean=[float(images.mean() / 255)] * 3, std=[float(images.std() / 255)] * 3)
    transform = build_eval_transform(pre)
    rgb = np.repeat(images[:, :, :, None], 3, axis=3)
    x = torch.stack([transform(image=im)["image"] for im in rgb])
    y = torch.from_numpy(labels)
    x_train, y_train = x[:-HELD_OUT], y[:-HELD_OUT]

    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(x_train)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()

    root = tmp_path_factory.mktemp("digits")
    bundle = root / "bundle"
    bundle.mkdir()
    onnx_path = export_onnx(model, x[:2], str(bundle / "model.onnx"))
    int8_path = quantize_int8(onnx_path, str(bundle / "model.int8.onnx"), x_train[:256].numpy())
    classes = [f"digit_{i}" for i in range(10)]
    write_labels(bundle, classes)
    artifacts = [artifact_entry(onnx_path, "onnx", "fp32"), artifact_entry(int8_path, "onnx-int8", "int8")]
    write_manifest(bundle, new_manifest("digits-tiny", classes, pre.to_dict(), artifacts,
                                        versions={"torch": torch.__version__}))

    from PIL import Image

    image_dir = root / "images"
    image_dir.mkdir()
    paths = []
    for i in range(len(images) - HELD_OUT, len(images)):
        path = image_dir / f"{i:04d}_label{labels[i]}.png"
        Image.fromarray(images[i], mode="L").save(path)
        paths.append(str(path))
    with torch.no_grad():
        torch_logits = model(x[-HELD_OUT:]).numpy()
    return SimpleNamespace(path=str(bundle), model=model, classes=classes, preprocessing=pre.to_dict(),
                           image_paths=paths, labels=labels[-HELD_OUT:], torch_logits=torch_logits,
                           inputs=x[-HELD_OUT:].numpy())


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path):
    """A private copy of the session bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(digits_bundle.path, target)
    return str(target)


@pytest.fixture
def run_cli(capsys):
    """Run `python -m deploy ARGS` in-process; returns (exit code, stdout, stderr)."""
    from deploy.__main__ import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        # `infer` says which file and runtime it uses on stderr first; its own test checks that line, the others
        # check what follows it
        err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("using "))
        return code, out, err

    return run
