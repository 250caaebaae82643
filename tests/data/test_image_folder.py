"""ImageFolder: discovery, labels, modes and crops, corrupt files, and every error path."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from lla.data import ImageFolder, batches, get_source

RNG = np.random.default_rng(0)


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def noise(width, height, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode=None)


@pytest.fixture
def folder(tmp_path):
    """cats/{a.png RGB 40x30, b.JPG grey 17x50}; dogs/{d.gif palette, sub/c.png RGBA, corrupt
    broken.png}; plus files that must be ignored."""
    save(tmp_path / "cats" / "a.png", noise(40, 30))
    save(tmp_path / "cats" / "b.JPG", noise(17, 50).convert("L"), format="JPEG")
    save(tmp_path / "dogs" / "d.gif", noise(20, 25).convert("P"))
    transparent = Image.new("RGBA", (33, 33), (255, 0, 0, 0))
    save(tmp_path / "dogs" / "sub" / "c.png", transparent)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "dogs" / ".hidden.png").write_bytes(b"ignored: hidden")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path


def test_finds_images_labels_subfolders_and_warns_once_about_corrupt_files(folder):
    with pytest.warns(UserWarning, match=r"skipped 1 of 5 files .*broken\.png") as record:
        source = ImageFolder(folder, resolution=16)
    assert len(record) == 1
    assert [str(f) for f in source.files] == ["cats/a.png", "cats/b.JPG", "dogs/d.gif",
                                              "dogs/sub/c.png"]
    assert source.class_names == ("cats", "dogs") and source.num_classes == 2
    assert source.labels.tolist() == [0, 0, 1, 1]
    for index in range(source.num_examples):
        image, label = source.example(index)
        assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
        assert label == source.labels[index]
    np.testing.assert_array_equal(source.example(3)[0], 255)  # transparent -> white


def test_grey_output_and_batches(folder):
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        source = get_source("image_folder", path=str(folder), resolution=8, channels=1)
    batch = next(batches(source, batch_size=6, seed=0))
    assert batch["image"].shape == (6, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert sorted(set(batch["label"].tolist())) == [0, 1]


def test_centre_crop_keeps_the_middle(tmp_path):
    stripes = np.zeros((16, 48, 3), np.uint8)
    stripes[:, :16, 0] = stripes[:, 16:32, 1] = stripes[:, 32:, 2] = 255  # red|green|blue
    save(tmp_path / "wide.png", Image.fromarray(stripes))
    image, label = ImageFolder(tmp_path, resolution=8).example(0)
    np.testing.assert_array_equal(image, np.broadcast_to([0, 255, 0], (8, 8, 3)))
    assert label == 0


def test_jpeg_is_decoded_at_reduced_scale_without_losing_the_crop(tmp_path):
    save(tmp_path / "big.jpg", Image.new("RGB", (640, 480), (200, 40, 10)), quality=95)
    image, _ = ImageFolder(tmp_path, resolution=32).example(0)
    assert image.shape == (32, 32, 3)
    assert np.abs(image.astype(int) - [200, 40, 10]).max() <= 6


@pytest.mark.parametrize("layout", [("a.png", "b.png"), ("only/a.png", "only/b.png"),
                                    ("a.png", "x/b.png", "y/c.png")])
def test_unlabelled_unless_all_images_sit_in_several_subfolders(tmp_path, layout):
    for name in layout:
        save(tmp_path / name, noise(9, 9))
    source = ImageFolder(tmp_path, resolution=4)
    assert source.num_classes == 0 and source.class_names == ()
    assert source.labels.tolist() == [0] * len(layout)


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ImageFolder(tmp_path / "does-not-exist", resolution=8)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"file\.png"):
        ImageFolder(tmp_path / "file.png", resolution=8)


def test_empty_folder_names_the_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images in .*\.jpg \.jpeg \.png .*\(any case\)"):
        ImageFolder(tmp_path, resolution=8)


def test_all_files_corrupt(tmp_path):
    for i in range(7):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"skipped 7 of 7 .*bad4\.jpg.*; and 2 more$"), \
            pytest.raises(ValueError, match=r"no readable images .* all 7"):
        ImageFolder(tmp_path, resolution=8)


def truncated_jpeg(path):
    encoded = io.BytesIO()
    noise(64, 64).save(encoded, format="JPEG")
    path.write_bytes(encoded.getvalue()[:-200])  # passes verify(), fails to decode


def test_undecodable_file_found_late_is_skipped_with_a_counted_warning(tmp_path):
    """A truncated JPEG passes the header check; its examples read the next image, with one
    warning naming it, and a batch stream over it never fails."""
    for name in ("a.png", "c.png"):
        noise(16, 16).save(tmp_path / name)
    truncated_jpeg(tmp_path / "b.jpg")
    source = ImageFolder(tmp_path, resolution=8)
    assert source.num_examples == 3
    with pytest.warns(UserWarning, match=r"cannot decode image .*b\.jpg.*skipped \(1 of 3 "
                                         r"images undecodable so far"):
        image, _ = source.example(1)
    np.testing.assert_array_equal(image, source.example(2)[0])  # the next image
    assert list(source.undecodable) == [1]
    stream = batches(source, batch_size=3, seed=0)
    for _ in range(4):
        assert next(stream)["image"].shape == (3, 8, 8, 3)


def test_on_error_raise_names_the_file(tmp_path):
    truncated_jpeg(tmp_path / "truncated.jpg")
    source = ImageFolder(tmp_path, resolution=8, on_error="raise")
    with pytest.raises(ValueError, match=r"cannot decode image .*truncated\.jpg"):
        list(itertools.islice(batches(source, batch_size=1, seed=0), 1))


def test_a_path_is_required(tmp_path):
    with pytest.raises(ValueError, match=r"image_folder needs a path: set it with "
                                         r"--config.data.kwargs.path="):
        ImageFolder("", resolution=8)
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise'"):
        ImageFolder(tmp_path, resolution=8, on_error="ignore")


def test_verify_false_skips_the_check(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    source = ImageFolder(tmp_path, resolution=8, verify=False, on_error="raise")
    assert source.num_examples == 1
    with pytest.raises(ValueError, match=r"cannot decode image .*bad\.png"):
        source.example(0)
    with pytest.warns(UserWarning, match=r"bad\.png"), pytest.raises(
            ValueError, match=r"no image in .* can be decoded"):
        ImageFolder(tmp_path, resolution=8, verify=False).example(0)
