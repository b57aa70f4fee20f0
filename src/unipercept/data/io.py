"""Reading dataset files safely (images, palette PNGs, json, RefCOCO's pickles), and writing
result files atomically."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from unipercept.data.datasets.base import DatasetError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _rgb8(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image, 16-bit grey scaled to 8 bits."""
    if image.mode in _SIXTEEN_BIT:
        # PIL's convert("RGB") clips 16-bit values at 255 (a white picture): scale instead.
        wide = np.asarray(image, dtype=np.uint32)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "32-bit float"
        raise DatasetError(
            path,
            "image",
            f"a {kind} image has no standard brightness range; save it as 8 or 16 bits per channel",
        )
    return np.array(image.convert("RGB"))  # (H, W, 3), writable


def load_image(path: str | Path) -> Tensor:
    """(3, H, W) uint8 RGB pixels of an image file (16-bit grey is scaled to 8 bits).

    Raises:
        DatasetError: the file is missing, unreadable, not an image, or a 32-bit integer or
            float image (whose brightness range is unknown).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            array = _rgb8(image, path)
    except FileNotFoundError:
        raise DatasetError(path, "image", "file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(path, "image", f"cannot be decoded as an image ({error})") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def load_index_png(path: str | Path) -> np.ndarray:
    """(H, W) uint8 object indices of a palette PNG (DAVIS, YouTube-VOS annotations); a
    grey-scale PNG is read as is.

    Raises:
        DatasetError: missing or undecodable file, or an RGB image (indices would be lost).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "1"):
                raise DatasetError(
                    path, "annotation", f"expected a palette or grey PNG, got mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(path, "annotation", "file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(path, "annotation", f"cannot be decoded ({error})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise DatasetError(path, "image", "file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(path, "image", f"cannot be decoded as an image ({error})") from None


def load_json(path: str | Path) -> Any:
    """Parses a json file.

    Raises:
        DatasetError: missing file or malformed json, with the line and column.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetError(path, "file", "not found") from None
    except json.JSONDecodeError as error:
        raise DatasetError(
            path, f"line {error.lineno} column {error.colno}", f"malformed json: {error.msg}"
        ) from None


class _PlainUnpickler(pickle.Unpickler):
    """Admits only what plain data needs; any class reference is refused, so a pickle cannot
    run code while it loads."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain containers, strings and numbers are "
            "allowed in this file"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """Loads a pickle made only of dicts, lists, tuples, sets, strings, bytes and numbers (as
    RefCOCO's ``refs(unc).p``), refusing every class (the ``find_class`` hook blocks all
    imports, so nothing can execute).

    Raises:
        DatasetError: missing or truncated file, or a pickle that references any class.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(path, "file", "not found") from None
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetError(path, "pickle", str(error)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_permissions(path: str | Path) -> None:
    """Gives a file the permissions ``open()`` would (``0o666`` less the umask), and a folder
    those ``mkdir`` would (``0o777`` less the umask); for what ``tempfile.mkstemp``,
    ``tempfile.mkdtemp`` or safetensors created readable by their owner only. (A folder needs
    its x bits: without them nobody else can open the files in it.)"""
    mode = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, mode & ~_umask())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` so that readers see the old file or the whole new one.

    The text goes to a temporary file in the same folder (created when missing), is flushed to
    disk, and is renamed over ``path``; on any failure the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        file.write(text)
    return path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file written in pieces that appears at ``path`` whole or not at all: written to a
    temporary file beside it, flushed to disk and renamed; on any failure the temporary file is
    removed and ``path`` is left as it was."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it what open() would.
        default_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def is_png_file(path: Path) -> bool:
    """Whether ``path`` is a regular ``.png`` file: what the mask writers may replace."""
    return path.is_file() and not path.is_symlink() and path.suffix.lower() == ".png"


def replace_folder(
    staging: str | Path, folder: str | Path, *, owned: Callable[[Path], bool]
) -> Path:
    """Renames the complete ``staging`` folder to ``folder``, so readers see the old folder or
    the whole new one, and never deletes what the writer did not write.

    An existing ``folder`` is replaced only when each entry in it is one the writer could have
    written (``owned``: e.g. the PNGs of a results folder); anything else there, or a file at
    ``folder``, stops the write with ``staging`` left untouched for the caller to discard.

    Args:
        staging: the new content, on the same file system (create it beside ``folder``).
        folder: where it goes.
        owned: whether an entry of an existing ``folder`` may be replaced.

    Returns:
        ``folder``.

    Raises:
        FileExistsError: ``folder`` is a file, or holds an entry ``owned`` refuses (named).
    """
    staging, folder = Path(staging), Path(folder)
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or folder.is_symlink():
            raise FileExistsError(f"{folder} exists and is not a folder; it was left as it is")
        foreign = next((entry for entry in sorted(folder.iterdir()) if not owned(entry)), None)
        if foreign is not None:
            raise FileExistsError(
                f"{folder} holds {foreign.name}, which this writer did not write; nothing was "
                "replaced (write elsewhere, or move it away)"
            )
        # A directory rename cannot replace a non-empty one: the old one moves aside first, into
        # a fresh folder of our own that is then deleted.
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, aside / folder.name)
        try:
            os.replace(staging, folder)
        except BaseException:
            os.replace(aside / folder.name, folder)
            aside.rmdir()
            raise
        shutil.rmtree(aside)
    else:
        os.replace(staging, folder)
    return folder
