"""deploy's numpy/OpenCV preprocessing equals the DataModule's albumentations eval transform, and every
image mode a user might have decodes to the RGB a person would see."""

import io

import numpy as np
import pytest
from PIL import Image

from datamodules.presets import INTERPOLATIONS, Preprocessing, build_eval_transform
from deploy.images import read_image
from deploy.preprocess import Preprocessor, preprocess, preprocess_image

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def reference(path_or_array, pre: Preprocessing) -> np.ndarray:
    rgb = read_image(path_or_array)
    return build_eval_transform(pre)(image=rgb)["image"].numpy()


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("crop", [None, [20, 18]])
def test_digits_match_training_eval_transform(digits_bundle, interpolation, crop):
    pre = Preprocessing(resize=[24, 22], crop=crop, interpolation=interpolation, **IMAGENET)
    batch, kept, errors = preprocess(digits_bundle.image_paths, pre.to_dict())
    assert errors == [] and kept == list(range(len(digits_bundle.image_paths)))
    expected = np.stack([reference(p, pre) for p in digits_bundle.image_paths])
    assert batch.shape == expected.shape == (len(kept), 3) + tuple(crop or [24, 22])
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-5)


def test_bundle_preprocessing_reproduces_the_training_tensors(digits_bundle):
    batch, _, _ = preprocess(digits_bundle.image_paths, digits_bundle.preprocessing)
    np.testing.assert_allclose(batch, digits_bundle.inputs, rtol=0, atol=1e-5)


def _mode_images(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (53, 37, 3), dtype=np.uint8)  # odd size on purpose
    base = Image.fromarray(rgb)
    images = {
        "L": base.convert("L"),
        "LA": base.convert("LA"),
        "P": base.convert("P"),
        "RGBA": base.convert("RGBA"),
        "CMYK": base.convert("CMYK"),
        "I;16": Image.fromarray((rng.integers(0, 65536, (31, 45))).astype(np.uint16)),
        "1": base.convert("1"),
    }
    ptrans = base.convert("P")
    ptrans.info["transparency"] = 0
    images["P+transparency"] = ptrans
    files = {}
    for name, img in images.items():
        ext = ".jpg" if name == "CMYK" else (".tif" if name == "I;16" else ".png")
        path = tmp_path / (name.replace(";", "").replace("+", "_") + ext)
        img.save(path)
        files[name] = path
    return files


def test_every_image_mode_becomes_rgb_and_matches_reference(tmp_path):
    pre = Preprocessing(resize=[19, 23], crop=[17, 21], interpolation="area", **IMAGENET)
    for mode, path in _mode_images(tmp_path).items():
        rgb = read_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, mode
        np.testing.assert_allclose(preprocess_image(path, pre.to_dict()), reference(path, pre), rtol=0, atol=1e-5,
                                   err_msg=mode)


def test_sixteen_bit_scales_instead_of_saturating(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert read_image(path)[0, :, 0].tolist() == [0, 128, 255]


def test_gray_and_palette_keep_their_values(tmp_path):
    gray = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert (out[:, :, 0] == gray).all() and (out[:, :, 1] == gray).all() and (out[:, :, 2] == gray).all()
    Image.fromarray(np.full((4, 4, 3), (200, 30, 90), np.uint8)).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[0, 0].tolist() == [200, 30, 90]


def test_exif_orientation_is_honoured(tmp_path):
    # A 40x20 (WxH) picture, left half red, stored with orientation 6 (camera turned 90 degrees clockwise).
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    rgb = read_image(path)
    assert rgb.shape == (40, 20, 3)  # shown upright: taller than wide
    assert rgb[5, 10, 0] > 200 and rgb[35, 10, 0] < 60  # red now on top
    pre = Preprocessing(resize=[16, 8], interpolation="bilinear", **IMAGENET)
    np.testing.assert_allclose(preprocess_image(path, pre.to_dict()), reference(path, pre), rtol=0, atol=1e-5)


def test_bytes_and_arrays_give_the_same_tensor_as_the_file(digits_bundle):
    path = digits_bundle.image_paths[0]
    prep = Preprocessor(digits_bundle.preprocessing)
    from_file = preprocess_image(path, prep)
    from_bytes = preprocess_image(open(path, "rb").read(), prep)
    gray = np.asarray(Image.open(path))
    from_array = preprocess_image(np.repeat(gray[:, :, None], 3, axis=2), prep)
    np.testing.assert_array_equal(from_file, from_bytes)
    np.testing.assert_array_equal(from_file, from_array)


def test_unreadable_inputs_are_reported_and_the_batch_goes_on(digits_bundle, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:6000])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    sources = [digits_bundle.image_paths[0], str(junk), str(truncated), np.zeros((4, 4), np.float32),
               str(empty), str(tmp_path / "missing.png"), digits_bundle.image_paths[1], io.BytesIO().getvalue()]
    batch, kept, errors = preprocess(sources, digits_bundle.preprocessing)
    assert kept == [0, 6] and batch.shape == (2, 3, 14, 14)
    messages = dict(errors)
    assert set(messages) == {1, 2, 3, 4, 5, 7}
    assert messages[1] == f"{junk}: not an image (unrecognised format)"
    assert messages[2].startswith(f"{truncated}: cannot be decoded")
    assert "expected a uint8 image array" in messages[3]
    assert messages[4] == f"{empty}: empty file (0 bytes)"
    assert messages[5].endswith("missing.png: no such file")
    assert messages[7] == "bytes[7]: empty input (0 bytes)"
