"""Image decoding shared by training and the device: any file, bytes or array becomes HWC uint8 RGB.

Both the DataModule (when it indexes and reads a folder) and the device runtime decode through this
one function, so a photo that trains as RGB is also served as RGB, with the same EXIF orientation and
the same handling of gray, alpha, palette, 16-bit and CMYK images.

Every way an input can be bad (missing, a dangling link, not a regular file, empty, unreadable, not an
image, truncated, over the pixel limit, or any exception inside a decoder plugin) is one exception type,
``ImageDecodeError``, whose message is one sentence naming the input; callers catch that one type.
"""

from __future__ import annotations

import base64
import io
import os
import stat
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageDecodeError(ValueError):
    """An input that is not a decodable image; the message names the input and the reason."""


def max_pixels() -> Optional[int]:
    """The largest width x height decoded: Pillow's own decompression-bomb line (``PIL.Image.MAX_IMAGE_PIXELS``).

    Its default, 89.5 megapixels, is a 0.27 GB RGB array: every camera's full-resolution photo (a 61-MP full-frame
    sensor, 9504x6336) passes, while a few-kilobyte PNG that claims a 14000x13000 canvas is refused from its header,
    before a byte is decoded. Read at each call so that a user who raises Pillow's limit (or sets it to None for
    trusted data) raises this one too; Pillow itself refuses outright at twice the limit.
    """
    return Image.MAX_IMAGE_PIXELS


def is_image_file(name: str) -> bool:
    """True for a visible file with an image extension (compared case-insensitively)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


# A file name is bytes on POSIX; Python hands undecodable bytes over as lone surrogates (os.fsdecode's
# surrogateescape), which strict UTF-8 text and standard JSON cannot hold. Where a name is written as JSON, it is
# "file": the name when it is valid text, else "file_bytes": its bytes in base64 (the way back) with "file_shown":
# the name with those bytes as \xNN escapes (for a reader).
def name_fields(name: str, key: str = "file") -> dict[str, str]:
    """The JSON fields for one file name (see above)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        return {f"{key}_bytes": base64.b64encode(raw).decode("ascii"), f"{key}_shown": shown_name(name)}
    return {key: name}


def name_from_fields(row: dict, key: str = "file") -> str:
    """The file name ``name_fields`` wrote, as os.fsdecode gives it (opens the same file)."""
    if key in row:
        return row[key]
    return os.fsdecode(base64.b64decode(row[f"{key}_bytes"]))


def shown_name(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 become \\xNN (a message never fails on a name)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any common mode to an HWC uint8 RGB array.

    16-bit and 32-bit integer images are scaled down by their bit depth instead of clipped (PIL's own
    convert('RGB') saturates them to white); alpha is dropped; palette and CMYK go through PIL.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def array_to_rgb(arr: np.ndarray, name: str = "array") -> np.ndarray:
    """Accept HW (gray), HWC with 1, 3 or 4 channels (RGB order), uint8; return HWC uint8 RGB."""
    if arr.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: expected a uint8 image array, got dtype {arr.dtype}; convert it to uint8 0-255 first")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return np.repeat(arr, 3, axis=2)
        return np.ascontiguousarray(arr[:, :, :3])
    raise ImageDecodeError(f"{name}: expected an HxW or HxWxC (C in 1, 3, 4) array, got shape {arr.shape}")


def _check_file(path: str, label: str) -> None:
    """Refuse what ``open`` cannot safely read: a missing file, a dangling link, a folder or FIFO, an empty file."""
    try:
        st = os.stat(path)  # follows links: the target is what gets read
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageDecodeError(f"{label}: a symbolic link whose target {os.readlink(path)} does not exist") from None
        raise ImageDecodeError(f"{label}: no such file") from None
    except OSError as exc:
        raise ImageDecodeError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        # opening a FIFO or a device named *.png would block or stream forever
        raise ImageDecodeError(f"{label}: not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")


def _decode(img: Image.Image, label: str) -> np.ndarray:
    limit = max_pixels()
    width, height = img.size
    if limit is not None and width * height > limit:
        raise ImageDecodeError(f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                               f"{limit / 1e6:.1f}-megapixel limit (a possible decompression bomb); downscale it, "
                               "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    img.load()  # decode fully now: a truncated file fails here, not later in a worker
    return pil_to_rgb(img)


def read_image(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Decode a path, encoded bytes or an array to HWC uint8 RGB, or raise ImageDecodeError saying why."""
    if isinstance(source, np.ndarray):
        return array_to_rgb(source, name or "array")
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "bytes")
    try:
        if isinstance(source, (bytes, bytearray)):
            if len(source) == 0:
                raise ImageDecodeError(f"{label}: empty input (0 bytes)")
            handle = io.BytesIO(source)
        else:
            _check_file(os.fspath(source), label)
            handle = open(source, "rb")
        # Pillow warns (DecompressionBombWarning) between its limit and twice it, and _decode refuses those images
        # itself; the warning filters are not touched here because they are process-wide and this runs in threads.
        with handle, Image.open(handle) as img:
            return _decode(img, label)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: no such file") from None
    except PermissionError:
        raise ImageDecodeError(f"{label}: not readable (permission denied)") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{label}: not a regular file") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        limit = max_pixels() or 0
        raise ImageDecodeError(f"{label}: over {2 * limit / 1e6:.0f} megapixels, refused unread as a possible "
                               "decompression bomb; downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
                               ) from None
    except Exception as exc:  # noqa: BLE001 (decoder plugins raise anything: struct.error, IndexError, MemoryError...)
        detail = str(exc).rstrip(".") or "no detail"
        raise ImageDecodeError(f"{label}: cannot be decoded ({type(exc).__name__}: {detail})") from None
