"""experiments/imagefolder_scratch.yaml, as a user runs it: a folder of real scans with a few broken files in it,
names that are not UTF-8 and a hidden folder; then `test` on its checkpoint and `deploy infer` on its bundle."""

import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from edgecls_testing import EXPERIMENTS, REPO, printed_top1
from PIL import Image
from sklearn.datasets import load_digits

RECIPE = str(EXPERIMENTS / "imagefolder_scratch.yaml")


def write_digit_folder(root, per_class: int = 30) -> dict[str, str]:
    """root/<digit>/*.png: scikit-learn's scanned handwritten digits as 32x32 gray PNGs, plus broken files.

    Returns {relative path: words its exclusion reason must contain} for the broken ones.
    """
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for pixels, label in zip(digits.images, digits.target):
        if counts[label] == per_class:
            continue
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        gray = np.rint(pixels * (255 / 16)).astype(np.uint8)
        Image.fromarray(gray).resize((32, 32), Image.BILINEAR).save(folder / f"{counts[label]:03d}.png")
        counts[label] += 1
    (root / "digit_3" / "empty.png").write_bytes(b"")
    (root / "digit_5" / "readme.png").write_text("scanned by the night shift\n")
    whole = (root / "digit_7" / "000.png").read_bytes()
    (root / "digit_7" / "cut.png").write_bytes(whole[: len(whole) // 2])
    os.symlink(root / "digit_9" / "gone.png", root / "digit_9" / "link.png")
    # names a Latin-1 camera or an old archive leaves: bytes that are not UTF-8 (Python sees os.fsdecode's escapes)
    (root / "digit_1" / os.fsdecode(b"caf\xe9.png")).write_bytes((root / "digit_1" / "000.png").read_bytes())
    (root / "digit_2" / os.fsdecode(b"\xff\xfe.png")).write_bytes(b"")
    (root / ".thumbnails").mkdir()  # a hidden folder of images: not a class, said in one line
    (root / ".thumbnails" / "000.png").write_bytes((root / "digit_1" / "000.png").read_bytes())
    return {"digit_3/empty.png": "empty file", "digit_5/readme.png": "not an image",
            "digit_7/cut.png": "cannot be decoded", "digit_9/link.png": "symbolic link",
            os.fsdecode(b"digit_2/\xff\xfe.png"): "empty file"}


@pytest.mark.slow
def test_scratch_recipe_trains_a_folder_of_real_scans_skips_broken_files_and_beats_chance(tmp_path, cli):
    root = tmp_path / "my_images"
    broken = write_digit_folder(root)
    proc = cli(["fit", "--config", RECIPE, "--data.source.root", root, "--data.image_size", "32",
                "--data.batch_size", "16", "--trainer.max_epochs", "6", "--trainer.enable_progress_bar", "false",
                "--data.cache_dir", tmp_path / "cache"], tmp_path)

    run = tmp_path / "runs" / "imagefolder_scratch" / "version_0"
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) >= 2, checkpoints  # the best val/top1 and the last
    text = (run / "excluded_images.txt").read_text(errors="surrogateescape")  # names byte for byte
    listed = dict(line.split("\t") for line in text.splitlines())
    assert set(listed) == set(broken)
    for name, words in broken.items():
        assert words in listed[name], (name, listed[name])
    top1 = printed_top1(proc.stdout)
    assert top1 > 0.5, proc.stdout[-3000:]  # chance is 0.1
    assert re.search(r"hidden folder\(s\) \['.thumbnails'\] hold images but are not classes", proc.stderr)
    odd = os.fsdecode(b"digit_1/caf\xe9.png")
    splits = "".join((run / "split" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
    assert '"file_shown": "digit_1/caf\\\\xe9.png"' in splits  # and "file_bytes", the way back
    assert (run / "bundle" / "manifest.json").is_file()

    # `test` from the run's config (its split is made again, odd names and all) on its checkpoint
    tested = cli(["test", "--config", run / "config.yaml", "--ckpt_path", run / "checkpoints" / "last.ckpt"], tmp_path)
    assert printed_top1(tested.stdout) > 0.5
    out = subprocess.run([sys.executable, "-m", "deploy", "infer", "--bundle", str(run / "bundle"), str(root / odd)],
                         capture_output=True, cwd=REPO, check=True).stdout
    (line,) = out.splitlines()
    row = json.loads(line)
    assert os.fsdecode(base64.b64decode(row["file_bytes"])) == str(root / odd)  # the way back to the file
    assert row["file_shown"].endswith("digit_1/caf\\xe9.png") and row["top"][0]["class"].startswith("digit_")
