"""FID and KID of a generative model's samples against real images of its own data source:
the one evaluation behind `experiments/evaluate.py` and flow matching's periodic FID
(`fid_count`).

    sample = objective.sampler(model, count=64, steps=20)   # (params, key) -> uint8 [64, R, R, C]
    scores = sample_quality.score(lambda key: sample(params, key), source, count=10_000,
                                  batch_size=64, key=jax.random.key(0))
    scores.fid, scores.kid_mean, scores.kid_std
    scores.metrics()     # {"samples/fid": ..., "samples/kid_mean": ..., "samples/kid_std": ...}

Samples: batch i is `sample(fold_in(key, i))`, `ceil(count / batch_size)` batches with a
progress bar (the surplus of the last one dropped), Inception features (`lla.evaluation.
inception`, grey images repeated to RGB) in the same batches. Real images: `reference_count =
min(count, source.num_examples)` examples of the source, a fixed draw (`reference_indices`:
the seed-0 permutation of a finite source, so every class is represented; examples 0, 1, ...
of an infinite one), their features cached by `fid.reference` under (`reference_name(source)`,
resolution, reference_count): computed once, with a progress bar, then read from
`<cache>/stats/`. The name fingerprints the source's first images, so another split, folder,
channel count or generator version never reuses a file. Every Inception call sees one shape,
[batch_size, R, R, C] (short batches are padded), so the network compiles once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from lla.data.base import epoch_permutation
from lla.evaluation import fid, inception

# Images of the source hashed into `reference_name`.
FINGERPRINT_IMAGES = 8
# Random stream of the reference draw of a finite source (`epoch_permutation(n, seed, 0)`).
REFERENCE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Scores:
    """FID and KID (mean, std over subsets) of `count` samples against `reference_count` real
    images; `reference` is the cache name of the real set (`reference_name`), `kid_subset_size`
    the subset size KID used (clipped to the smaller set); `sample_features` the samples'
    features [count, D] they were computed from (e.g. for `lla.evaluation.memorisation`)."""

    fid: float
    kid_mean: float
    kid_std: float
    count: int
    reference_count: int
    reference: str
    kid_subset_size: int
    sample_features: np.ndarray = dataclasses.field(repr=False, compare=False)

    def metrics(self, prefix: str = "samples/") -> dict[str, float]:
        """{prefix + "fid" | "kid_mean" | "kid_std": value} for the metric writers."""
        return {f"{prefix}fid": self.fid, f"{prefix}kid_mean": self.kid_mean,
                f"{prefix}kid_std": self.kid_std}


def reference_indices(source, count: int) -> np.ndarray:
    """The example indices int [min(count, num_examples)] of the real images: a prefix of the
    seed-`REFERENCE_SEED` permutation of a finite source (so any count draws every class),
    `0 .. count - 1` of an infinite one."""
    if source.num_examples is None:
        return np.arange(count)
    return np.asarray(epoch_permutation(source.num_examples, REFERENCE_SEED, 0)[:count])


def reference_name(source) -> str:
    """`<source class>-<12 hex>`: the class name and a SHA-256 of its size, geometry and its
    first `FINGERPRINT_IMAGES` reference images (a cache name for `fid.reference`)."""
    digest = hashlib.sha256(repr((type(source).__name__, source.num_examples, source.resolution,
                                  source.channels)).encode())
    for index in reference_indices(source, FINGERPRINT_IMAGES):
        digest.update(np.ascontiguousarray(source.example(int(index))[0]).tobytes())
    return f"{type(source).__name__.lower()}-{digest.hexdigest()[:12]}"


def real_images(source, indices: np.ndarray, batch_size: int, *,
                progress: bool = True) -> Iterator[np.ndarray]:
    """The source's images `indices` as uint8 batches [<= batch_size, R, R, C], with a
    progress bar."""
    with tqdm(total=len(indices), desc="fid reference", unit="img", leave=False,
              disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            batch = np.stack([source.example(int(i))[0]
                              for i in indices[start:start + batch_size]])
            bar.update(len(batch))
            yield batch


def padded_features(images: np.ndarray, batch_size: int, params: dict | None = None
                    ) -> np.ndarray:
    """Inception features float32 [n, 2048] of images [n <= batch_size, H, W, C], run as one
    batch of `batch_size` (zero-padded), so every call has one shape."""
    return inception.features(inception.pad_batch(images, batch_size), params=params,
                              batch_size=batch_size, progress=False)[:len(images)]


def sample_features(sample: Callable[[jax.Array], jax.Array], key: jax.Array, *, count: int,
                    batch_size: int, features: Callable[[np.ndarray], np.ndarray],
                    progress: bool = True) -> np.ndarray:
    """Features float32 [count, D] of `count` samples, batch i drawn by
    `sample(fold_in(key, i)) -> uint8 [batch_size, H, W, C]`.

    Raises:
      ValueError: `sample` returned another number of images than `batch_size`.
    """
    out = None
    with tqdm(total=count, desc="fid samples", unit="img", leave=False,
              disable=not progress) as bar:
        for i, start in enumerate(range(0, count, batch_size)):
            images = np.asarray(sample(jax.random.fold_in(key, i)))
            if len(images) != batch_size:
                raise ValueError(f"the sampler gave {len(images)} images, expected "
                                 f"batch_size {batch_size}")
            take = min(batch_size, count - start)
            batch = np.asarray(features(images[:take]), np.float32)
            if out is None:
                out = np.empty((count, batch.shape[1]), np.float32)
            out[start:start + take] = batch
            bar.update(take)
    return out


def score(sample: Callable[[jax.Array], jax.Array], source, *, count: int, batch_size: int,
          key: jax.Array, kid_subset_size: int = 1000, kid_subsets: int = 100,
          params: dict | None = None, features: Callable[[np.ndarray], np.ndarray] | None = None,
          version: str = inception.VERSION, directory: str | os.PathLike | None = None,
          progress: bool = True) -> Scores:
    """FID and KID of `count` samples against the source's real images (module docstring).

    Args:
      sample: `sample(key) -> uint8 [batch_size, R, R, C]` in [0, 255], R and C the source's.
      source: the image source (`lla.data.ImageSource`) the model was trained on.
      count: number of samples (>= 2); also the number of real images, up to the source's
        size.
      batch_size: images per `sample` call and per feature batch.
      key: the sampling randomness (batch i uses `fold_in(key, i)`).
      kid_subset_size, kid_subsets: KID's subsets (`fid.kid`).
      params: the Inception params (default `inception.load_params()`).
      features: a stand-in feature network, uint8 [<= batch_size, ...] -> [n, D] (default
        Inception via `padded_features`); `version` names it for the reference cache.
      directory: the reference cache folder (default `fid.reference_path`'s).
      progress: progress bars for sampling and the reference features.

    Raises:
      ValueError: count < 2, batch_size < 1, or a source of fewer than 2 images.
      FileNotFoundError: no Inception weights (the message names the fetch script).
    """
    if count < 2:
        raise ValueError(f"FID and KID need >= 2 samples (a covariance); got count {count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if features is None:
        params = inception.load_params() if params is None else params

        def features(images):
            return padded_features(images, batch_size, params)

    indices = reference_indices(source, count)
    if len(indices) < 2:
        raise ValueError(f"{type(source).__name__} has {len(indices)} image(s); FID needs >= 2")
    name = reference_name(source)
    real = fid.reference(name, source.resolution, len(indices),
                         lambda: real_images(source, indices, batch_size, progress=progress),
                         features=features, version=version, directory=directory)
    fake = sample_features(sample, key, count=count, batch_size=batch_size,
                           features=features, progress=progress)
    kid_mean, kid_std = fid.kid(fake, real.features, subset_size=kid_subset_size,
                                subsets=kid_subsets)
    return Scores(fid=fid.frechet_distance(fid.statistics(fake), real.statistics),
                  kid_mean=kid_mean, kid_std=kid_std, count=count,
                  reference_count=len(indices), reference=name,
                  kid_subset_size=min(kid_subset_size, count, len(indices)),
                  sample_features=fake)


def reference_file(source, count: int, directory: str | os.PathLike | None = None
                   ) -> pathlib.Path:
    """Where `score(..., source, count=count)` caches the real images' features."""
    return fid.reference_path(reference_name(source), source.resolution,
                              len(reference_indices(source, count)), directory)
