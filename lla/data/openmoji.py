"""OpenMoji: 4,495 colour emoji (CC-BY-SA 4.0) rasterised once to uint8 arrays, and their source.

`bash scripts/fetch_openmoji.sh [DEST [RES ...]]` (default `data/openmoji`, 64 128 256)
downloads the npm package `openmoji` 17.0.0 (SHA-256 pinned), renders every SVG of
`package/color/svg/` with PyPI `resvg-py` 0.5.0 (`write_dataset`) and writes:

    DEST/manifest.json       package, tarball SHA-256, renderer, background, the resolutions
                             written so far, and per image (in hexcode order) its
                             hexcode, group, subgroups, annotation and skin tone
    DEST/<res>/images.npy    uint8 [N, res, res, 3], N = 4,495, row i = manifest entry i

The emoji are drawn on a transparent canvas (72 x 72 viewBox, the glyph inset from the edge);
they are composited over a white background, so the arrays are opaque RGB. `OpenMoji` serves
them memory-mapped (instant to open; pages are read on first use).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from lla.data.base import check_geometry

PACKAGE = "openmoji@17.0.0"
TARBALL_SHA256 = "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"
RESVG_PY_VERSION = "0.5.0"
DEFAULT_DIRECTORY = "data/openmoji"
DEFAULT_RESOLUTIONS = (64, 128, 256)
FETCH = "bash scripts/fetch_openmoji.sh"
SVG_FOLDER = "package/color/svg/"
METADATA = "package/data/openmoji.json"
BACKGROUND = "#ffffff"
MANIFEST = "manifest.json"
SPLITS = ("all", "train", "test")
TEST_EVERY = 10  # split "test": every 10th design (with its skin tones); "train": the others
METADATA_FIELDS = ("group", "subgroups", "annotation", "skintone", "skintone_base_hexcode")


def rasterise(svg: str, resolution: int) -> np.ndarray:
    """The SVG document `svg` rendered to `resolution` x `resolution` over white: uint8
    `[resolution, resolution, 3]`.

    The SVG's viewBox is scaled to the square (resvg-py, system fonts not loaded: OpenMoji
    draws no text); transparent and partly transparent pixels are composited over white.
    """
    import resvg_py  # only the fetch needs it

    check_geometry(resolution, 3)
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=resolution, height=resolution,
                                    background=BACKGROUND, skip_system_fonts=True)
    except ValueError as error:
        raise ValueError(f"resvg cannot render the SVG: {error}") from error
    with Image.open(io.BytesIO(bytes(png))) as image:
        rgba = np.asarray(image.convert("RGBA"))
    if rgba.shape != (resolution, resolution, 4) or (rgba[..., 3] != 255).any():
        raise ValueError(f"resvg rendered {rgba.shape} with transparent pixels; expected an "
                         f"opaque {resolution} x {resolution} image")
    return np.ascontiguousarray(rgba[..., :3])


def read_package(tarball: str | os.PathLike) -> tuple[list[str], list[str], list[dict]]:
    """(hexcodes, SVG documents, metadata entries) of every colour SVG in the npm tarball,
    sorted by hexcode (the file name without .svg: "1F44B" before "1F44B-1F3FB")."""
    with tarfile.open(tarball, "r:gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()
                          and m.name.startswith(SVG_FOLDER) and m.name.endswith(".svg")),
                         key=lambda m: m.name.removesuffix(".svg"))  # base before variants
        if not members:
            raise ValueError(f"{str(tarball)!r} holds no {SVG_FOLDER}*.svg: not the openmoji "
                             "npm package?")
        svgs = [archive.extractfile(m).read().decode("utf-8") for m in members]
        try:
            entries = json.loads(archive.extractfile(METADATA).read())
        except KeyError:
            entries = []
    hexcodes = [m.name[len(SVG_FOLDER):-len(".svg")] for m in members]
    by_hexcode = {entry.get("hexcode"): entry for entry in entries}
    metadata = [{"hexcode": code, **{field: str(by_hexcode.get(code, {}).get(field, ""))
                                     for field in METADATA_FIELDS}} for code in hexcodes]
    return hexcodes, svgs, metadata


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of a fetched directory, or None if there is none."""
    path = pathlib.Path(directory).expanduser() / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def missing_resolutions(directory: str | os.PathLike, resolutions: Iterable[int],
                        tarball_sha256: str = TARBALL_SHA256) -> list[int]:
    """Those of `resolutions` not yet written to `directory` from the tarball `tarball_sha256`."""
    manifest = read_manifest(directory) or {}
    done = set(manifest.get("resolutions", [])) \
        if manifest.get("tarball_sha256") == tarball_sha256 else set()
    root = pathlib.Path(directory).expanduser()
    return [r for r in resolutions
            if r not in done or not (root / str(r) / "images.npy").is_file()]


def write_dataset(tarball: str | os.PathLike, directory: str | os.PathLike,
                  resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, *,
                  tarball_sha256: str = TARBALL_SHA256, package: str = PACKAGE,
                  progress: bool = False) -> dict:
    """Renders every colour SVG of the npm tarball into `directory/<res>/images.npy` (uint8
    `[N, res, res, 3]`) for each resolution not already there, and returns the manifest.

    Idempotent and restartable: each array is written to `images.npy.partial` and renamed
    when complete, and `manifest.json` (rewritten after each resolution) lists the finished
    ones; arrays of another tarball (`tarball_sha256` differs) are rebuilt.
    """
    import resvg_py

    root = pathlib.Path(directory).expanduser()
    todo = missing_resolutions(root, resolutions, tarball_sha256)
    manifest = read_manifest(root) or {}
    if manifest.get("tarball_sha256") != tarball_sha256:
        manifest = {}
    if not todo and manifest:
        return manifest
    hexcodes, svgs, metadata = read_package(tarball)
    manifest = {
        "package": package, "tarball_sha256": tarball_sha256,
        "renderer": f"resvg-py {resvg_py.__version__} (resvg "
                    f"{getattr(resvg_py, '__resvg_version__', '?')})",
        "background": BACKGROUND, "count": len(hexcodes),
        "resolutions": sorted(set(manifest.get("resolutions", [])) - set(todo)),
        "emoji": metadata,
    }
    for resolution in todo:
        check_geometry(resolution, 3)
        folder = root / str(resolution)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "images.npy.partial"
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                           shape=(len(svgs), resolution, resolution, 3))
        for index, (code, svg) in enumerate(zip(hexcodes, svgs, strict=True)):
            try:
                images[index] = rasterise(svg, resolution)
            except ValueError as error:
                raise ValueError(f"cannot render {code}.svg at {resolution} px: {error}") \
                    from error
            if progress and (index + 1) % 500 == 0:
                print(f"  {resolution} px: {index + 1} / {len(svgs)}", flush=True)
        images.flush()
        del images
        os.replace(partial, folder / "images.npy")
        manifest["resolutions"] = sorted({*manifest["resolutions"], resolution})
        (root / f"{MANIFEST}.partial").write_text(json.dumps(manifest, indent=1))
        os.replace(root / f"{MANIFEST}.partial", root / MANIFEST)
        if progress:
            print(f"  {resolution} px: {folder / 'images.npy'}", flush=True)
    return manifest


class OpenMoji:
    """The fetched OpenMoji images at `resolution` (module docstring), unlabelled.

    `split`: "all" (default, 4,495 images; the whole set is also the FID reference), or a
    fixed hold-out by design: "test" = every `TEST_EVERY`-th design (`design_index`) with all
    its skin tones, "train" the others, so no recoloured copy of a test image is trained on.
    `skin_tones=False` drops the 2,030 skin-tone variants of people emoji (recoloured
    near-duplicates of their base design), leaving the 2,465 designs.
    `channels=1` serves grey (ITU-R 601 luma). `hexcodes` names each example's emoji.

    Shapes: `example` -> (uint8 `[resolution, resolution, channels]`, 0).
    """

    num_classes = 0

    def __init__(self, directory: str | os.PathLike = DEFAULT_DIRECTORY,
                 resolution: int = 64, channels: int = 3, *, split: str = "all",
                 skin_tones: bool = True):
        check_geometry(resolution, channels)
        if split not in SPLITS:
            raise ValueError(f"unknown OpenMoji split {split!r}; known: {', '.join(SPLITS)}")
        root = pathlib.Path(directory).expanduser()
        manifest = read_manifest(root)
        extra = "" if resolution in DEFAULT_RESOLUTIONS else f" {resolution}"
        fetch = f"`{FETCH} {directory}{extra}`"
        if manifest is None:
            raise FileNotFoundError(f"OpenMoji not found: no {MANIFEST} in {str(root)!r}. "
                                    f"Fetch it with {fetch}")
        done = sorted(manifest.get("resolutions", []))
        path = root / str(resolution) / "images.npy"
        if resolution not in done or not path.is_file():
            have = ", ".join(map(str, done)) or "none"
            raise FileNotFoundError(f"OpenMoji at {resolution} px not in {str(root)!r} "
                                    f"(fetched resolutions: {have}). Render it with {fetch}")
        images = np.load(path, mmap_mode="r")
        count = len(manifest["emoji"])
        if images.dtype != np.uint8 or images.shape != (count, resolution, resolution, 3):
            raise ValueError(f"{str(path)!r} holds {images.dtype} {images.shape}; the manifest "
                             f"promises uint8 {(count, resolution, resolution, 3)}. Delete "
                             f"{str(root)!r} and fetch again with {fetch}")
        keep = np.arange(count)
        if not skin_tones:
            keep = keep[[not entry.get("skintone") for entry in manifest["emoji"]]]
        if split != "all":
            test = design_index(manifest["emoji"]) % TEST_EVERY == TEST_EVERY - 1
            keep = keep[test[keep] == (split == "test")]
        self.directory = root
        self.images = images
        self.indices = keep
        self.hexcodes = tuple(manifest["emoji"][i]["hexcode"] for i in keep)
        self.num_examples = len(keep)
        self.resolution = resolution
        self.channels = channels
        self.split = split

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """(image uint8 [R, R, C], 0) of example `index` (row `indices[index]` of the array)."""
        image = np.asarray(self.images[self.indices[index]])
        if self.channels == 1:
            image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
        return image, 0



def design_index(emoji: Sequence[dict]) -> np.ndarray:
    """int64 `[N]`: for each manifest entry, the rank of its design (its
    `skintone_base_hexcode`, else its own hexcode) in order of first appearance."""
    ranks: dict[str, int] = {}
    bases = [entry.get("skintone_base_hexcode") or entry["hexcode"] for entry in emoji]
    return np.array([ranks.setdefault(base, len(ranks)) for base in bases], np.int64)
