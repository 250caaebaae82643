"""Memorisation check of a generative model's samples: each sample's nearest training image in
pixel space and in Inception space, measured against how near real images the model never
saw come to the training set. Behind `experiments/evaluate.py --memorisation`.

    report = memorisation.check(samples, sample_features, train, train_features,
                                held_out, held_out_features)  # held_out None: leave-one-out
    report.summary()            # baseline distances, ratios, fractions below the threshold
    report.per_sample()         # per sample: nearest distance, training row, ratio, per space
    imaging.save_png(memorisation.suspicious_grid(report, samples, train), "memorised.png")

Images are uint8 [N, R, R, C], features float32 [N, D] (the 2048 pool3 features of
`lla.evaluation.inception`, which FID uses). Distances are Euclidean: in pixel space over the
image in [-1, 1] (the models' scale, x / 127.5 - 1), i.e. the uint8 distance / 127.5.

The baseline of a space is the median over held-out real images of the distance to their
nearest training image, or, without held-out images, the median over the training images of
the distance to their nearest *other* training image (leave-one-out; near-duplicates in the
data, e.g. OpenMoji's skin-tone variants, shrink it, so a held-out split is the better
yardstick). A sample's ratio in a space is its nearest distance over the baseline: ~1 for a
sample as new as an unseen real image, << 1 for a copy (0 for an exact one). Its ratio is the
smaller of the two; `fraction_below` counts samples with a ratio below `threshold` (default
`THRESHOLD`), next to `reference_fraction_below`, the same fraction of the baseline's own
images (held-out, or training images left out one at a time): what a model that does not
copy would show.

Nearest neighbours are exact and computed in float32 on the default device, `chunk_size`
queries against `chunk_size` keys at a time (|q|^2 - 2 q.k + |k|^2 at HIGHEST precision; the
winner's distance is then recomputed as |q - k|, so a copy gets exactly 0). The keys stay on
the device in their own dtype (uint8 images: one byte per pixel) and are cast per chunk.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lla.data.imaging import image_grid

THRESHOLD = 1 / 3
CHUNK_SIZE = 512
SUSPICIOUS = 16  # rows of the grid and entries of the summary's "most_suspicious"
PIXEL_SCALE = 1 / 127.5  # uint8 distances -> distances of the images in [-1, 1]


@dataclasses.dataclass(frozen=True)
class Neighbours:
    """The nearest key of each query: `distance` float32 [N] and `index` int32 [N] (a row of
    the keys)."""

    distance: np.ndarray
    index: np.ndarray


@jax.jit
def _nearest_chunk(queries: jax.Array, exclude: jax.Array, key_chunks: jax.Array,
                   key_count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest of `key_count` keys for queries [B, D] (any real dtype), never the key
    `exclude` [B] (-1: none), keys [K, C, D] in chunks of C (rows >= key_count are padding):
    (distance float32 [B], index int32 [B])."""
    q = queries.astype(jnp.float32)
    q_norms = jnp.sum(q * q, axis=1)
    chunk = key_chunks.shape[1]

    def step(best, chunk_and_start):
        keys, start = chunk_and_start
        k = keys.astype(jnp.float32)
        squared = (q_norms[:, None] - 2 * jnp.matmul(q, k.T, precision=jax.lax.Precision.HIGHEST)
                   + jnp.sum(k * k, axis=1)[None, :])
        index = start + jnp.arange(chunk, dtype=jnp.int32)
        allowed = (index[None, :] < key_count) & (index[None, :] != exclude[:, None])
        squared = jnp.where(allowed, squared, jnp.inf)
        local = jnp.argmin(squared, axis=1)
        value = jnp.take_along_axis(squared, local[:, None], axis=1)[:, 0]
        better = value < best[0]
        return (jnp.where(better, value, best[0]), jnp.where(better, index[local], best[1])), None

    starts = jnp.arange(key_chunks.shape[0], dtype=jnp.int32) * chunk
    initial = (jnp.full(len(q), jnp.inf, jnp.float32), jnp.zeros(len(q), jnp.int32))
    (_, index), _ = jax.lax.scan(step, initial, (key_chunks, starts))
    nearest = key_chunks.reshape(-1, key_chunks.shape[-1])[index].astype(jnp.float32)
    return jnp.sqrt(jnp.sum((q - nearest) ** 2, axis=1)), index


def _padded(array: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
    """array [n <= rows, ...] -> [rows, ...], filled with `fill`."""
    missing = rows - len(array)
    return np.concatenate([array, np.full((missing, *array.shape[1:]), fill, array.dtype)])


class _Keys:
    """Keys [M, D] on the device in chunks [ceil(M / chunk_size), chunk_size, D], so several
    query sets search them with one transfer and one compilation."""

    def __init__(self, keys: np.ndarray, chunk_size: int):
        keys = np.asarray(keys)
        if keys.ndim != 2 or len(keys) < 1:
            raise ValueError(f"expected keys [M >= 1, D], got {keys.shape}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunks = -(-len(keys) // chunk_size)
        self.count, self.chunk_size = len(keys), chunk_size
        self.chunks = jnp.asarray(_padded(keys, chunks * chunk_size).reshape(
            chunks, chunk_size, keys.shape[1]))

    def nearest(self, queries: np.ndarray, exclude: np.ndarray | None = None) -> Neighbours:
        """The nearest key of each query [N, D], never the key `exclude` int [N] (-1: none)."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.chunks.shape[-1]:
            raise ValueError(f"expected queries [N, {self.chunks.shape[-1]}], got "
                             f"{queries.shape}")
        exclude = (np.full(len(queries), -1, np.int32) if exclude is None
                   else np.asarray(exclude, np.int32))
        if exclude.shape != queries.shape[:1]:
            raise ValueError(f"exclude must be [{len(queries)}], got {exclude.shape}")
        distance = np.empty(len(queries), np.float32)
        index = np.empty(len(queries), np.int32)
        size = self.chunk_size
        for start in range(0, len(queries), size):
            stop = min(start + size, len(queries))
            found = _nearest_chunk(_padded(queries[start:stop], size),
                                   _padded(exclude[start:stop], size, -1), self.chunks,
                                   np.int32(self.count))
            distance[start:stop] = np.asarray(found[0])[:stop - start]
            index[start:stop] = np.asarray(found[1])[:stop - start]
        return Neighbours(distance, index)


def nearest_neighbours(queries: np.ndarray, keys: np.ndarray, *,
                       exclude: np.ndarray | None = None,
                       chunk_size: int = CHUNK_SIZE) -> Neighbours:
    """The nearest row of `keys` [M, D] (Euclidean) to each row of `queries` [N, D], both of
    any real dtype, computed in float32 in chunks (module docstring); ties go to the lower
    index.

    Args:
      exclude: int [N], a key each query may not match (its own row, for leave-one-out);
        -1 for none.

    Raises:
      ValueError: not [N, D] and [M >= 1, D], exclude not [N], or chunk_size < 1.
    """
    return _Keys(keys, chunk_size).nearest(queries, exclude)


@dataclasses.dataclass(frozen=True)
class Space:
    """The nearest training items in one space: `samples` for each sample [n], `reference`
    for each held-out (or leave-one-out training) image [m], `baseline` the median of
    `reference.distance`."""

    samples: Neighbours
    reference: Neighbours
    baseline: float

    @property
    def ratio(self) -> np.ndarray:
        """float32 [n]: each sample's nearest distance / `baseline`."""
        return _ratio(self.samples.distance, self.baseline)

    @property
    def reference_ratio(self) -> np.ndarray:
        """float32 [m]: each reference image's nearest distance / `baseline`."""
        return _ratio(self.reference.distance, self.baseline)

    def summary(self, threshold: float) -> dict[str, float]:
        """{"baseline_distance", "ratio_min", "ratio_median", "fraction_below",
        "reference_fraction_below"} of this space alone."""
        return {"baseline_distance": self.baseline, "ratio_min": float(self.ratio.min()),
                "ratio_median": float(np.median(self.ratio)),
                "fraction_below": float(np.mean(self.ratio < threshold)),
                "reference_fraction_below": float(np.mean(self.reference_ratio < threshold))}


def _ratio(distance: np.ndarray, baseline: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero baseline: inf (or nan)
        return (distance / np.float32(baseline)).astype(np.float32)


def nearest_training(samples: np.ndarray, train: np.ndarray,
                     held_out: np.ndarray | None = None, *, scale: float = 1.0,
                     chunk_size: int = CHUNK_SIZE) -> Space:
    """One space of the check: vectors samples [n, D], train [M, D], held_out [m, D] or None
    (leave-one-out: each training row's nearest other row, M >= 2); distances times `scale`.

    Raises:
      ValueError: mismatched shapes, or leave-one-out with fewer than 2 training rows.
    """
    keys = _Keys(train, chunk_size)
    if held_out is None:
        if keys.count < 2:
            raise ValueError("leave-one-out needs >= 2 training images")
        reference = keys.nearest(train, exclude=np.arange(keys.count))
    else:
        reference = keys.nearest(held_out)
    nearest = keys.nearest(samples)

    def scaled(found):
        return Neighbours((found.distance * np.float32(scale)).astype(np.float32), found.index)

    reference = scaled(reference)
    return Space(scaled(nearest), reference, float(np.median(reference.distance)))


@dataclasses.dataclass(frozen=True)
class Report:
    """Both spaces of the check (module docstring); `leave_one_out` when there were no
    held-out images."""

    pixel: Space
    inception: Space
    leave_one_out: bool

    @property
    def ratio(self) -> np.ndarray:
        """float32 [n]: each sample's smaller ratio of the two spaces."""
        return np.minimum(self.pixel.ratio, self.inception.ratio)

    def most_suspicious(self, count: int = SUSPICIOUS) -> np.ndarray:
        """int [min(count, n)]: the samples of the smallest `ratio`, smallest first."""
        return np.argsort(self.ratio, kind="stable")[:count]

    def summary(self, threshold: float = THRESHOLD, train_ids: np.ndarray | None = None,
                suspicious: int = SUSPICIOUS) -> dict:
        """The numbers a person reads (module docstring), JSON-ready: the baseline kind, set
        sizes, `fraction_below` and `reference_fraction_below` (`ratio` < threshold), each
        space's `Space.summary`, and the `suspicious` most suspicious samples with their
        nearest training images, named by `train_ids` [M] (default the training rows)."""
        reference_ratio = np.minimum(self.pixel.reference_ratio, self.inception.reference_ratio)

        def train_id(row):
            return int(row if train_ids is None else train_ids[row])

        return {
            "baseline": "leave_one_out" if self.leave_one_out else "held_out",
            "samples": len(self.ratio), "reference_images": len(reference_ratio),
            "threshold": threshold,
            "fraction_below": float(np.mean(self.ratio < threshold)),
            "reference_fraction_below": float(np.mean(reference_ratio < threshold)),
            "pixel": self.pixel.summary(threshold),
            "inception": self.inception.summary(threshold),
            "most_suspicious": [{
                "sample": int(i), "ratio": float(self.ratio[i]),
                "pixel_train": train_id(self.pixel.samples.index[i]),
                "pixel_distance": float(self.pixel.samples.distance[i]),
                "inception_train": train_id(self.inception.samples.index[i]),
                "inception_distance": float(self.inception.samples.distance[i]),
            } for i in self.most_suspicious(suspicious)]}

    def per_sample(self, train_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Arrays [n] per sample: `<space>_distance`, `<space>_train` (the nearest training
        image, as `train_ids` [M] name it; default its row) and `<space>_ratio` for space
        pixel and inception, and `ratio`."""
        out = {"ratio": self.ratio}
        for name, space in (("pixel", self.pixel), ("inception", self.inception)):
            index = space.samples.index
            out |= {f"{name}_distance": space.samples.distance,
                    f"{name}_train": index if train_ids is None else np.asarray(train_ids)[index],
                    f"{name}_ratio": space.ratio}
        return out


def check(samples: np.ndarray, sample_features: np.ndarray, train: np.ndarray,
          train_features: np.ndarray, held_out: np.ndarray | None = None,
          held_out_features: np.ndarray | None = None, *,
          chunk_size: int = CHUNK_SIZE) -> Report:
    """The memorisation check (module docstring) of samples uint8 [n, R, R, C] with their
    features [n, D] against training images uint8 [M, R, R, C] with features [M, D], and
    held-out real images uint8 [m, R, R, C] with features [m, D] (both None: leave-one-out).

    Raises:
      ValueError: images and features of different counts, images of different shapes, only
        one of held_out and held_out_features, or leave-one-out with fewer than 2 training
        images.
    """
    if (held_out is None) != (held_out_features is None):
        raise ValueError("give both held_out and held_out_features, or neither")
    sets = [(samples, sample_features), (train, train_features)]
    sets += [] if held_out is None else [(held_out, held_out_features)]
    for images, features in sets:
        if np.shape(images)[1:] != np.shape(train)[1:] or len(images) != len(features):
            raise ValueError(f"images {np.shape(images)} with features {np.shape(features)}: "
                             f"expected [count, *{np.shape(train)[1:]}] and [count, D]")

    def flat(images):
        return None if images is None else np.asarray(images).reshape(len(images), -1)

    pixel = nearest_training(flat(samples), flat(train), flat(held_out), scale=PIXEL_SCALE,
                             chunk_size=chunk_size)
    features = [None if f is None else np.asarray(f, np.float32)
                for f in (sample_features, train_features, held_out_features)]
    return Report(pixel, nearest_training(*features, chunk_size=chunk_size),
                  leave_one_out=held_out is None)


def suspicious_grid(report: Report, samples: np.ndarray, train: np.ndarray,
                    count: int = SUSPICIOUS) -> np.ndarray:
    """uint8 [rows * R, 3 * R, C]: for each of the `count` most suspicious samples (smallest
    ratio first, one row each), the sample, its nearest training image in pixel space and
    its nearest in Inception space (`lla.data.imaging.image_grid`)."""
    rows = report.most_suspicious(count)
    triples = np.stack([samples[rows], train[report.pixel.samples.index[rows]],
                        train[report.inception.samples.index[rows]]], axis=1)
    return image_grid(triples.reshape(-1, *np.shape(samples)[1:]), columns=3)

