"""Frame metrics against direct per-window computations written out here."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from lla.evaluation import frames


def ssim_by_windows(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two [H, W] images in [0, 1]: every valid 11 x 11 window, its Gaussian-weighted
    statistics summed out term by term, the index averaged over windows."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-offsets ** 2 / (2 * 1.5 ** 2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            mx, my = (weights * x).sum(), (weights * y).sum()
            vx = (weights * (x - mx) ** 2).sum()
            vy = (weights * (y - my) ** 2).sum()
            cxy = (weights * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2)
                          / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_equals_the_window_by_window_definition_per_frame_and_channel():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, (2, 3, 14, 13, 2))
    prediction = np.clip(truth + rng.normal(0, 0.3, truth.shape), -1, 1)
    got = np.asarray(frames.ssim(jnp.asarray(prediction), jnp.asarray(truth)))
    assert got.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            expected = np.mean([ssim_by_windows(prediction[b, t, ..., c] / 2 + 0.5,
                                                truth[b, t, ..., c] / 2 + 0.5)
                                for c in range(2)])
            assert got[b, t] == pytest.approx(expected, rel=1e-4)


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    truth = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 1)))
    assert np.allclose(frames.ssim(truth, truth), 1.0, atol=1e-5)
    noisy = [float(frames.ssim(truth + s * jnp.sin(truth * 7), truth)[0]) for s in (0.1, 0.5)]
    assert 1.0 > noisy[0] > noisy[1]


def test_mse_and_psnr_are_on_the_unit_scale():
    truth = jnp.zeros((2, 4, 4, 1))
    prediction = truth.at[0].set(0.2)  # 0.1 on [0, 1]: mse 0.01, psnr 20 dB
    assert np.allclose(frames.mse(prediction, truth), [0.01, 0.0])
    psnr = np.asarray(frames.psnr(prediction, truth))
    assert psnr[0] == pytest.approx(20.0, rel=1e-5) and math.isinf(psnr[1])


def test_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        frames.ssim(jnp.zeros((8, 8, 1)), jnp.zeros((8, 8, 1)))
