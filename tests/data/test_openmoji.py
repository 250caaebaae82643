"""OpenMoji: SVG rasterisation (resvg-py) of hand-written SVGs and a tiny synthetic npm tarball,
the source on synthetic arrays written to tmp_path (no network, no resvg needed), and, when
`bash scripts/fetch_openmoji.sh` has run, the real data in data/openmoji."""

from __future__ import annotations

import io
import json
import pathlib
import re
import subprocess
import tarfile

import numpy as np
import pytest

from lla.data import OpenMoji, batches, get_source
from lla.data import openmoji as om

ROOT = pathlib.Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "openmoji"
SCRIPT = ROOT / "scripts" / "fetch_openmoji.sh"

RED_SQUARE = ('<svg viewBox="0 0 8 8" xmlns="http://www.w3.org/2000/svg">'
              '<rect x="2" y="2" width="4" height="4" fill="#ff0000"/></svg>')
HALF_BLUE = ('<svg viewBox="0 0 8 8" xmlns="http://www.w3.org/2000/svg">'
             '<rect x="0" y="0" width="8" height="4" fill="#0000ff" fill-opacity="0.5"/></svg>')


def needs_resvg():
    return pytest.importorskip("resvg_py", reason="resvg-py not installed (pip install "
                               "resvg-py==0.5.0; scripts/fetch_openmoji.sh installs it)")


# --- rasterisation -------------------------------------------------------------------------

def test_rasterise_red_square_over_white():
    needs_resvg()
    image = om.rasterise(RED_SQUARE, 16)
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    inside = image[4:12, 4:12].reshape(-1, 3)
    np.testing.assert_array_equal(inside, np.tile([255, 0, 0], (64, 1)))
    outside = np.ones((16, 16), bool)
    outside[3:13, 3:13] = False  # leave the anti-aliased edge out
    assert (image[outside] == 255).all()  # transparent -> white, not black


def test_rasterise_composites_partial_transparency_and_scales_the_viewbox():
    needs_resvg()
    image = om.rasterise(HALF_BLUE, 10).astype(int)
    assert image.shape == (10, 10, 3)
    # 50 % blue over white = (127.5, 127.5, 255); the lower half is untouched white.
    np.testing.assert_allclose(image[:5].reshape(-1, 3), np.tile([128, 128, 255], (50, 1)),
                               atol=1)
    assert (image[5:] == 255).all()


def test_rasterise_rejects_a_broken_svg():
    needs_resvg()
    with pytest.raises(ValueError, match="resvg cannot render"):
        om.rasterise("<svg", 8)


COLOURS = {"1F600": "#ff0000", "1F44B": "#00ff00", "1F44B-1F3FB": "#0000ff",
           "2764": "#ffff00"}
METADATA = [
    {"hexcode": "1F600", "group": "smileys-emotion", "subgroups": "face-smiling",
     "annotation": "grinning face", "skintone": "", "skintone_base_hexcode": ""},
    {"hexcode": "1F44B", "group": "people-body", "subgroups": "hand-fingers-open",
     "annotation": "waving hand", "skintone": "", "skintone_base_hexcode": "1F44B"},
    {"hexcode": "1F44B-1F3FB", "group": "people-body", "subgroups": "hand-fingers-open",
     "annotation": "waving hand: light skin tone", "skintone": "1",
     "skintone_base_hexcode": "1F44B"},
    {"hexcode": "2764", "group": "smileys-emotion", "subgroups": "heart",
     "annotation": "red heart", "skintone": "", "skintone_base_hexcode": ""},
]


def write_tarball(path, colours=COLOURS, metadata=METADATA):
    """A miniature openmoji npm tarball: one full-canvas square per emoji, in `colours`."""
    def add(archive, name, text):
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as archive:
        for code, colour in reversed(list(colours.items())):  # not in sorted order
            add(archive, f"package/color/svg/{code}.svg",
                f'<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
                f'<rect width="72" height="72" fill="{colour}"/></svg>')
            add(archive, f"package/black/svg/{code}.svg", "<svg/>")  # must be ignored
        add(archive, "package/data/openmoji.json", json.dumps(metadata))
    return path


def test_write_dataset_renders_every_colour_svg_in_hexcode_order(tmp_path):
    needs_resvg()
    tarball = write_tarball(tmp_path / "openmoji.tgz")
    manifest = om.write_dataset(tarball, tmp_path / "out", [8, 12], tarball_sha256="abc")
    codes = sorted(COLOURS)
    assert [entry["hexcode"] for entry in manifest["emoji"]] == codes
    assert manifest["emoji"][codes.index("1F44B-1F3FB")]["skintone"] == "1"
    assert manifest["resolutions"] == [8, 12] and manifest["count"] == 4
    assert om.read_manifest(tmp_path / "out") == manifest
    for resolution in (8, 12):
        images = np.load(tmp_path / "out" / str(resolution) / "images.npy")
        assert images.shape == (4, resolution, resolution, 3) and images.dtype == np.uint8
        for row, code in enumerate(codes):
            rgb = [int(COLOURS[code][i:i + 2], 16) for i in (1, 3, 5)]
            assert (images[row] == rgb).all(), code
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_write_dataset_renders_only_what_is_missing(tmp_path, monkeypatch):
    needs_resvg()
    tarball = write_tarball(tmp_path / "openmoji.tgz")
    out = tmp_path / "out"
    om.write_dataset(tarball, out, [8], tarball_sha256="abc")
    rendered = []
    real = om.rasterise
    monkeypatch.setattr(om, "rasterise", lambda svg, r: rendered.append(r) or real(svg, r))
    om.write_dataset(tarball, out, [8], tarball_sha256="abc")
    assert rendered == []
    # complete: the tarball is not even opened
    assert om.write_dataset(tmp_path / "absent.tgz", out, [8], tarball_sha256="abc")["count"] == 4
    manifest = om.write_dataset(tarball, out, [8, 6], tarball_sha256="abc")
    assert rendered == [6] * 4 and manifest["resolutions"] == [6, 8]
    assert om.missing_resolutions(out, [6, 8, 10], "abc") == [10]
    assert om.missing_resolutions(out, [6, 8], "another tarball") == [6, 8]
    rendered.clear()
    om.write_dataset(tarball, out, [8], tarball_sha256="another tarball")
    assert rendered == [8] * 4 and om.read_manifest(out)["resolutions"] == [8]


def test_read_package_rejects_a_tarball_without_colour_svgs(tmp_path):
    path = tmp_path / "other.tgz"
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("package/README.md"), io.BytesIO(b""))
    with pytest.raises(ValueError, match="color/svg"):
        om.read_package(path)


def test_the_script_pins_the_tarball_the_module_expects():
    text = SCRIPT.read_text()
    assert re.search(rf"^tarball_sha256={om.TARBALL_SHA256}$", text, re.M)
    assert f"version={om.PACKAGE.split('@')[1]}" in text
    assert f"resvg=resvg-py=={om.RESVG_PY_VERSION}" in text
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


# --- the source, on synthetic arrays -------------------------------------------------------

def write_fetched(directory, resolutions=(8,), count=25, sha=om.TARBALL_SHA256):
    """A fetched-looking directory: image `i` is filled with the colour (i, 2i, 255 - i)."""
    directory.mkdir(parents=True, exist_ok=True)
    emoji = []
    for i in range(count):
        base = f"B{i - i % 5:03d}"  # designs of five: a base and four skin tones
        tone = i % 5
        emoji.append({"hexcode": base if tone == 0 else f"{base}-T{tone}", "group": "g",
                      "subgroups": "s", "annotation": f"emoji {i}",
                      "skintone": str(tone) if tone else "",
                      "skintone_base_hexcode": base})
    colours = np.array([[i, 2 * i, 255 - i] for i in range(count)], np.uint8)
    for resolution in resolutions:
        (directory / str(resolution)).mkdir()
        images = np.broadcast_to(colours[:, None, None], (count, resolution, resolution, 3))
        np.save(directory / str(resolution) / "images.npy", np.ascontiguousarray(images))
    (directory / om.MANIFEST).write_text(json.dumps(
        {"tarball_sha256": sha, "resolutions": list(resolutions), "count": count,
         "emoji": emoji}))
    return colours


def colour_of(image):
    return tuple(int(v) for v in image[0, 0])


def test_examples_are_the_rows_of_the_array(tmp_path):
    colours = write_fetched(tmp_path, (8, 16))
    source = OpenMoji(tmp_path, resolution=16)
    assert (source.num_examples, source.num_classes, source.channels) == (25, 0, 3)
    for index in (0, 7, 24):
        image, label = source.example(index)
        assert image.dtype == np.uint8 and image.shape == (16, 16, 3) and label == 0
        assert (image == colours[index]).all()
    assert source.hexcodes[:2] == ("B000", "B000-T1")


def test_batches_are_deterministic_resumable_and_in_range(tmp_path):
    colours = write_fetched(tmp_path)
    source = get_source("openmoji", directory=str(tmp_path), resolution=8)
    first = batches(source, batch_size=4, seed=3)
    run = [next(first) for _ in range(8)]  # 32 positions: crosses an epoch of 25
    again = batches(source, batch_size=4, seed=3)
    resumed = batches(source, batch_size=4, seed=3, start_step=5)
    for batch in run[:2]:
        np.testing.assert_array_equal(next(again)["image"], batch["image"])
    for batch in run[5:]:
        np.testing.assert_array_equal(next(resumed)["image"], batch["image"])
    other = next(batches(source, batch_size=4, seed=4))
    assert not np.array_equal(other["image"], run[0]["image"])
    images = np.concatenate([batch["image"] for batch in run])
    assert images.shape == (32, 8, 8, 3) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1
    seen = {tuple(np.round((image[0, 0] + 1) * 127.5).astype(int)) for image in images[:25]}
    assert seen == {tuple(int(v) for v in c) for c in colours}  # one epoch = every image
    assert (np.concatenate([b["label"] for b in run]) == 0).all()
    np.testing.assert_allclose(images[..., 2].max(), 1.0)  # 255 -> 1
    np.testing.assert_allclose(images[..., 0].min(), -1.0)  # 0 -> -1


def test_splits_hold_out_whole_designs(tmp_path):
    write_fetched(tmp_path, count=60)  # 12 designs of five
    whole = OpenMoji(tmp_path, resolution=8)
    train = OpenMoji(tmp_path, resolution=8, split="train")
    test = OpenMoji(tmp_path, resolution=8, split="test")
    assert (train.num_examples, test.num_examples) == (55, 5)
    assert sorted({*train.hexcodes, *test.hexcodes}) == sorted(whole.hexcodes)
    assert {code.split("-")[0] for code in test.hexcodes} == {"B045"}  # the 10th design
    assert colour_of(test.example(0)[0]) == (45, 90, 210)
    bases = OpenMoji(tmp_path, resolution=8, skin_tones=False)
    assert bases.num_examples == 12 and all("-" not in code for code in bases.hexcodes)
    assert colour_of(bases.example(1)[0]) == (5, 10, 250)
    assert OpenMoji(tmp_path, resolution=8, split="test", skin_tones=False).hexcodes == ("B045",)


def test_grey(tmp_path):
    write_fetched(tmp_path)
    image, _ = OpenMoji(tmp_path, resolution=8, channels=1).example(3)
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8
    assert int(image[0, 0, 0]) == round(0.299 * 3 + 0.587 * 6 + 0.114 * 252)


def test_missing_data_names_the_fetch_script(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bash scripts/fetch_openmoji\.sh"):
        OpenMoji(tmp_path / "absent", resolution=64)


def test_missing_resolution_lists_what_was_fetched(tmp_path):
    write_fetched(tmp_path, (8, 16))
    with pytest.raises(FileNotFoundError,
                       match=r"64 px .*fetched resolutions: 8, 16\).*fetch_openmoji\.sh"):
        OpenMoji(tmp_path, resolution=64)
    with pytest.raises(FileNotFoundError, match=r"fetch_openmoji\.sh \S+ 32`"):
        OpenMoji(tmp_path, resolution=32)  # not a default resolution: named in the command
    (tmp_path / "16" / "images.npy").unlink()
    with pytest.raises(FileNotFoundError, match="fetched resolutions: 8, 16"):
        OpenMoji(tmp_path, resolution=16)


def test_inconsistent_arrays_and_bad_arguments_are_refused(tmp_path):
    write_fetched(tmp_path)
    np.save(tmp_path / "8" / "images.npy", np.zeros((24, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="manifest promises"):
        OpenMoji(tmp_path, resolution=8)
    with pytest.raises(ValueError, match="split"):
        OpenMoji(tmp_path, resolution=8, split="validation")
    with pytest.raises(ValueError, match="channels"):
        OpenMoji(tmp_path, resolution=8, channels=4)
    with pytest.raises(ValueError, match="arguments are"):
        get_source("openmoji", path=str(tmp_path))


# --- the real data, when fetched -----------------------------------------------------------

real = pytest.mark.skipif(not (REAL / om.MANIFEST).is_file(),
                          reason="no data/openmoji (run: bash scripts/fetch_openmoji.sh)")


@real
def test_real_openmoji():
    manifest = om.read_manifest(REAL)
    assert manifest["count"] == 4495 and manifest["tarball_sha256"] == om.TARBALL_SHA256
    assert len(manifest["resolutions"]) > 0
    for resolution in manifest["resolutions"]:
        source = OpenMoji(REAL, resolution=resolution)
        assert source.num_examples == 4495 and source.hexcodes[0] == "0023-FE0F-20E3"
        images = source.images
        assert images.shape == (4495, resolution, resolution, 3)
        frame = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0],
                                images[:, :, -1]], axis=1)
        assert (frame == 255).all(axis=(1, 2)).mean() > 0.99  # inset glyphs on white
        assert (images.reshape(4495, -1).min(1) < 100).all()  # every emoji has dark lines
        grinning = source.example(source.hexcodes.index("1F600"))[0]
        centre = grinning[resolution // 2 - resolution // 8, resolution // 2]
        assert centre[0] > 200 and centre[1] > 180 and centre[2] < 120  # yellow face
    resolution = manifest["resolutions"][0]
    counts = {split: OpenMoji(REAL, resolution, split=split).num_examples
              for split in om.SPLITS}
    assert counts == {"all": 4495, "train": 3999, "test": 496}
    assert OpenMoji(REAL, resolution, skin_tones=False).num_examples == 2465
