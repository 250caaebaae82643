"""The image-source interface and the one batching function every input pipeline goes through.

A source maps an integer index to one example; `batches` decides which indices make up each
step. The example stream is a pure function of `seed`:

- finite sources (`num_examples = N`): stream position `p` lies in epoch `p // N` and is
  example `permutation(seed, epoch)[p % N]`, the permutation drawn by
  `numpy.random.default_rng([seed, epoch])`. Every example appears once per epoch; batches may
  straddle epochs.
- infinite sources (`num_examples = None`, procedural data): position `p` is example
  `seed * 2**64 + p`, so different seeds never share an example.

Global step `s` holds positions `[s * batch_size, (s + 1) * batch_size)`; process `k` of
`n` takes the contiguous block `[k * b, (k + 1) * b)` of it, `b = batch_size // n`. Hence:

- resuming: the iterator's position *is* the step. Save the step in the checkpoint and pass it
  back as `start_step`; the batches are exactly those an uninterrupted run would have seen.
- multi-host: each process passes `jax.process_index()` / `jax.process_count()` and gets its
  rows of the global batch; `jax.make_array_from_process_local_data` assembles them in process
  order when each process's devices hold a contiguous block of the batch axis (mesh devices
  ordered by process).
- the stream itself depends only on `seed` (and the source), not on batch size or process
  count; resuming with another batch size continues at position `start_step * batch_size`.
"""

from __future__ import annotations

import functools
import itertools
import numbers
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

INFINITE_SEED_STRIDE = 2**64


class ImageSource(Protocol):
    """Random-access images with labels.

    Attributes:
      num_examples: number of distinct examples; None for an infinite (procedural) source,
        whose `example` accepts any non-negative integer.
      resolution: images are square, `[resolution, resolution, channels]`.
      channels: 1 (grey) or 3 (RGB).
      num_classes: number of label values `0 .. num_classes - 1`; 0 if unlabeled (labels 0).

    A source may also define `sample_statistics(images float [n, H, H, C] in [-1, 1]) ->
    dict[str, float]`, a cheap score of how much generated images look like its data;
    generative objectives report it with their samples.
    """

    num_examples: int | None
    resolution: int
    channels: int
    num_classes: int

    def example(self, index: int) -> tuple[np.ndarray, int]:
        """Returns (image uint8 `[resolution, resolution, channels]`, label) for `index`."""
        ...


def check_geometry(resolution: int, channels: int) -> None:
    """Raises ValueError unless `resolution` is a positive int and `channels` is 1 or 3."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The read-only order int64 `[num_examples]` of one epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def batch_indices(num_examples: int | None, *, batch_size: int, seed: int, step: int,
                  process_index: int = 0, process_count: int = 1) -> list[int]:
    """The example indices of this process's share of global step `step` (module docstring).

    Returns `batch_size // process_count` indices; arguments are assumed validated.
    """
    local = batch_size // process_count
    first = step * batch_size + process_index * local
    positions = range(first, first + local)
    if num_examples is None:
        return [seed * INFINITE_SEED_STRIDE + p for p in positions]
    indices = []
    for epoch in range(first // num_examples, (first + local - 1) // num_examples + 1):
        lo = max(first, epoch * num_examples)
        hi = min(first + local, (epoch + 1) * num_examples)
        order = epoch_permutation(num_examples, seed, epoch)
        indices.extend(order[lo - epoch * num_examples:hi - epoch * num_examples].tolist())
    return indices


def check_batching(source: ImageSource, *, batch_size: int, seed: int, start_step: int,
                   process_index: int, process_count: int) -> None:
    """Raises ValueError, naming a fix, for any argument `batches` cannot honour."""
    for name, value in (("batch_size", batch_size), ("process_count", process_count)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("seed", seed), ("start_step", start_step)):
        if not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not (isinstance(process_index, numbers.Integral) and 0 <= process_index < process_count):
        raise ValueError(f"process_index must be in [0, {process_count}) for process_count "
                         f"{process_count}, got {process_index!r}")
    if batch_size % process_count:
        below = batch_size - batch_size % process_count
        above = below + process_count
        fits = f"{below} or {above}" if below else f"{above}"
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                         f"{process_count}; use a multiple of {process_count}, e.g. {fits}")
    if source.num_examples is not None and source.num_examples < 1:
        raise ValueError(f"{type(source).__name__} has no examples")


def batches(source: ImageSource, *, batch_size: int, seed: int, start_step: int = 0,
            process_index: int = 0, process_count: int = 1,
            num_threads: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's share of global steps `start_step, start_step + 1, ...` forever.

    Each batch is `{"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b]}` with
    `b = batch_size // process_count`, `H = W = source.resolution`, `C = source.channels`.
    Examples are decoded on `num_threads` threads (default `min(8, cpu_count)`) and the next
    step is prepared while the caller works on the current one. Errors raised by the source
    surface here, in Python, before anything reaches JAX; bad arguments raise ValueError at
    the call, not at the first `next`.

    A source with its own batching (a `batches` method with these keyword arguments, e.g.
    the token sources of `lla.data.text`) is asked for its batches instead, after the same
    argument checks.
    """
    check_batching(source, batch_size=batch_size, seed=seed, start_step=start_step,
                   process_index=process_index, process_count=process_count)
    if hasattr(source, "batches"):
        return source.batches(batch_size=int(batch_size), seed=int(seed),
                              start_step=int(start_step), process_index=int(process_index),
                              process_count=int(process_count))
    return generate_batches(source, batch_size=int(batch_size), seed=int(seed),
                            start_step=int(start_step), process_index=int(process_index),
                            process_count=int(process_count),
                            num_threads=num_threads or min(8, os.cpu_count() or 1))


def generate_batches(source: ImageSource, *, batch_size: int, seed: int, start_step: int,
                     process_index: int, process_count: int,
                     num_threads: int) -> Iterator[dict[str, np.ndarray]]:
    """The generator behind `batches`, for arguments `check_batching` accepted."""
    shape = (batch_size // process_count, source.resolution, source.resolution,
             source.channels)
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="lla-data")

    def submit(step: int) -> tuple[dict[str, np.ndarray], list[Future]]:
        batch = {"image": np.empty(shape, np.float32), "label": np.empty(shape[0], np.int32)}
        indices = batch_indices(source.num_examples, batch_size=batch_size, seed=seed,
                                step=step, process_index=process_index,
                                process_count=process_count)
        chunk = -(-len(indices) // num_threads)
        return batch, [pool.submit(fill_rows, source, indices[first:first + chunk], batch, first)
                       for first in range(0, len(indices), chunk)]

    try:
        pending = submit(start_step)
        for step in itertools.count(start_step + 1):
            upcoming = submit(step)
            batch, futures = pending
            for future in futures:
                future.result()
            yield batch
            pending = upcoming
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def fill_rows(source: ImageSource, indices: list[int], batch: dict[str, np.ndarray],
              first_row: int) -> None:
    """Writes examples `indices`, scaled from uint8 to [-1, 1], into `batch` from `first_row`."""
    expected = batch["image"].shape[1:]
    for row, index in enumerate(indices, first_row):
        image, label = source.example(index)
        if image.dtype != np.uint8 or image.shape != expected:
            raise ValueError(f"{type(source).__name__}.example({index}) returned {image.dtype} "
                             f"{image.shape}; expected uint8 {expected}")
        np.multiply(image, np.float32(1 / 127.5), out=batch["image"][row])
        batch["image"][row] -= 1.0
        batch["label"][row] = label
