"""A folder of image files of any size, mode and format (e.g. a local FFHQ or ImageNet copy)."""

from __future__ import annotations

import os
import pathlib
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from lla.data.base import check_geometry
from lla.data.imaging import square_array

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SHOWN_BAD_FILES = 5


class ImageFolder:
    """Every image below `path`, centre-cropped and resized (bicubic) to `resolution`.

    Files are found recursively (extensions `EXTENSIONS`, any case; names starting with "."
    skipped; symlinks followed) and ordered by path. If every image lies in a first-level
    subfolder and there are at least two of them, the subfolder is the class: labels index the
    sorted `class_names`. Otherwise the folder is unlabelled (`num_classes = 0`, labels 0).

    With `verify` (the default) every file is opened and checked by `PIL.Image.verify` once, on
    threads; unreadable ones are dropped with one warning giving their count and first names.
    It reads each file's header (PNG: its chunks), not the pixels. A file that still fails to
    decode later (e.g. a truncated JPEG) is, with `on_error="skip"` (the default), skipped with
    a warning that counts such files: its examples read the next decodable image instead
    (deterministic, so resumes stay exact); with `on_error="raise"` it raises ValueError.

    Shapes: `example` -> (uint8 `[resolution, resolution, channels]`, label).
    """

    def __init__(self, path: str | os.PathLike = "", resolution: int | None = None,
                 channels: int = 3, *, verify: bool = True, on_error: str = "skip"):
        check_geometry(resolution, channels)
        if not str(path).strip():
            raise ValueError("image_folder needs a path: set it with --config.data.kwargs.path="
                             "/path/to/images (a folder searched recursively for images)")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise'; got {on_error!r}")
        root = pathlib.Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"image folder {str(path)!r} is not a directory")
        files = find_images(root)
        if not files:
            raise ValueError(f"no images in {str(root)!r}: searched recursively for files "
                             f"ending in {' '.join(EXTENSIONS)} (any case)")
        if verify:
            files = drop_unreadable(root, files)
        first_parts = {file.parts[0] for file in files}
        labelled = len(first_parts) > 1 and all(len(file.parts) > 1 for file in files)
        self.root = root
        self.files = tuple(files)
        self.class_names = tuple(sorted(first_parts)) if labelled else ()
        class_index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = np.array([class_index.get(file.parts[0], 0) for file in files], np.int32)
        self.num_examples = len(files)
        self.num_classes = len(self.class_names)
        self.resolution = resolution
        self.channels = channels
        self.on_error = on_error
        self.undecodable: dict[int, str] = {}  # file index -> why it failed
        self._undecodable_lock = threading.Lock()

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """(image uint8 [R, R, C], label) of `index`, or of the next decodable image (see the
        class docstring)."""
        for offset in range(self.num_examples):
            candidate = (index + offset) % self.num_examples
            if candidate in self.undecodable:
                continue
            try:
                return self.decode(candidate)
            except ValueError as error:
                if self.on_error == "raise":
                    raise
                self._skip(candidate, error)
        raise ValueError(f"no image in {str(self.root)!r} can be decoded "
                         f"({len(self.undecodable)} tried)")

    def _skip(self, index: int, error: ValueError) -> None:
        with self._undecodable_lock:
            if index in self.undecodable:
                return
            self.undecodable[index] = str(error)
            count = len(self.undecodable)
        warnings.warn(f"{error}; skipped ({count} of {self.num_examples} images undecodable so "
                      f"far; its examples read the next image; on_error='raise' stops "
                      f"instead)", stacklevel=2)

    def decode(self, index: int) -> tuple[np.ndarray, int]:
        """(image, label) of file `index`; ValueError naming the file if it does not decode."""
        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                # JPEG: decode at a reduced scale that still covers the crop (both sides >=).
                image.draft("RGB" if self.channels == 3 else "L",
                            (self.resolution, self.resolution))
                array = square_array(image, self.resolution, self.channels)
        except OSError as error:
            if error.errno is not None:  # the file system failed, not the image: re-raise
                raise
            raise ValueError(f"cannot decode image {str(path)!r}: {error}") from error
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"cannot decode image {str(path)!r}: {error}") from error
        return array, int(self.labels[index])


def find_images(root: pathlib.Path) -> list[pathlib.Path]:
    """Paths relative to `root` of the image files below it, sorted by their parts."""
    found, seen = [], set()
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a symlink cycle or a second link to the same folder
            subdirectories.clear()
            continue
        seen.add(real)
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        relative = pathlib.Path(directory).relative_to(root)
        found.extend(relative / name for name in names
                     if not name.startswith(".") and name.lower().endswith(EXTENSIONS))
    return sorted(found, key=lambda file: file.parts)


def unreadable(path: pathlib.Path) -> str | None:
    """Why `path` is not a readable image, or None if `PIL.Image.verify` accepts it."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}"
    return None


def drop_unreadable(root: pathlib.Path, files: list[pathlib.Path]) -> list[pathlib.Path]:
    """`files` without those `unreadable` rejects; warns once with the count and first names."""
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 2)) as pool:
        reasons = list(pool.map(unreadable, [root / file for file in files]))
    bad = [(file, reason) for file, reason in zip(files, reasons, strict=True) if reason]
    if bad:
        shown = "; ".join(f"{file} ({reason})" for file, reason in bad[:SHOWN_BAD_FILES])
        more = f"; and {len(bad) - SHOWN_BAD_FILES} more" if len(bad) > SHOWN_BAD_FILES else ""
        warnings.warn(f"ImageFolder {str(root)!r}: skipped {len(bad)} of {len(files)} files "
                      f"that are not readable images: {shown}{more}", stacklevel=3)
    if len(bad) == len(files):
        raise ValueError(f"no readable images in {str(root)!r}: all {len(files)} image files "
                         "failed to open")
    return [file for file, reason in zip(files, reasons, strict=True) if not reason]
