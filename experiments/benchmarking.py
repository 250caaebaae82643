"""Shared benchmark helpers: op entries, named shapes, inputs, a device-synchronised timer,
the error metric, the attention cost model against a device's ceilings, and the report
writer.

No flags here, so every experiment script can import it."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import pathlib
import re
import statistics
import time

import jax
import jax.numpy as jnp

import lla.attention as attention


@dataclasses.dataclass(frozen=True)
class Entry:
    """One thing to time: an op, an implementation (None = dispatch) and keyword arguments."""

    op: str
    implementation: str | None
    kwargs: tuple[tuple[str, object], ...]

    @classmethod
    def parse(cls, text: str) -> Entry:
        head, *pairs = text.strip().split("/")
        op, _, implementation = head.partition(":")
        attention.get(op)  # unknown names fail here, listing the registered ones
        return cls(op, implementation or None, tuple(parse_assignments(pairs, text).items()))

    def __str__(self) -> str:
        label = self.op + (f":{self.implementation}" if self.implementation else "")
        return label + "".join(f"/{k}={_text(v)}" for k, v in self.kwargs)

    def call_kwargs(self) -> dict:
        """The op's keyword arguments of this entry: its own over the op's `default_kwargs`."""
        return {**attention.get(self.op).default_kwargs, **dict(self.kwargs)}

    def function(self, *, reference: bool = False):
        """`f(q, k, v)` running this entry, or with `reference` the op's "xla" implementation,
        with `call_kwargs`."""
        op = attention.get(self.op)
        implementation = "xla" if reference else self.implementation
        kwargs = self.call_kwargs()
        return lambda q, k, v: op(q, k, v, implementation=implementation, **kwargs)


def _text(value) -> str:
    """A keyword value as written in --ops (tuples of ints as AxB)."""
    if isinstance(value, tuple) and value and all(isinstance(x, int) for x in value):
        return "x".join(map(str, value))
    return str(value)


def parse_value(text: str):
    """A keyword value as written on the command line: `AxB...` is a tuple of ints, else a
    Python literal, else the string itself."""
    if re.fullmatch(r"\d+(x\d+)+", text):
        return tuple(int(n) for n in text.split("x"))
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(items, context: str) -> dict:
    """['key=value', ...] -> {key: parse_value(value)}; `context` names the source in errors."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{context!r}: expected key=value, got {item!r}")
        parsed[key.strip()] = parse_value(value.strip())
    return parsed


SHAPES = {
    "tiny": (1, 256, 2, 32),
    "small": (1, 2048, 4, 64),
    "s16k": (1, 16384, 6, 64),
    "dit256": (1, 65536, 6, 64),
    "dit512": (1, 262144, 6, 64),
    "dit1024": (1, 1048576, 6, 64),
    "b2h4": (2, 65536, 4, 64),
    "h64": (1, 65536, 64, 64),
}


def parse_shape(name: str) -> tuple[int, int, int, int]:
    """A named shape from SHAPES or 'BxNxHxD' -> (B, N, H, D)."""
    if name in SHAPES:
        return SHAPES[name]
    if re.fullmatch(r"\d+x\d+x\d+x\d+", name):
        return tuple(int(x) for x in name.split("x"))
    raise ValueError(f"unknown shape {name!r}: use one of {sorted(SHAPES)} or BxNxHxD")


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """A device's datasheet ceilings: dense bf16 matrix TFLOP/s and HBM TB/s (measured here
    on an H200: about 790 TFLOP/s on random bf16 data and 4.3 TB/s copying;
    ../.library/device/KINDS.md)."""

    tflops: float
    hbm_tb_per_s: float


CEILINGS = {"NVIDIA H200": Ceilings(989.4, 4.8), "NVIDIA H100 80GB HBM3": Ceilings(989.4, 3.35)}


def attention_roofline(q_shape, k_shape, keys_per_query: float, itemsize: int,
                       seconds: dict[str, float], ceilings: Ceilings | None) -> dict:
    """Where an attention call stands against the device's limits, per mode ("fwd",
    "fwd_bwd") timed in `seconds`: {mode: {"flops", "bytes", "tflops_per_s", "tb_per_s",
    "compute_fraction", "memory_fraction"}} (fractions of `ceilings`, None without them).

    Model FLOPs: 4·Bt·N·H·D per key in a query's softmax (q·k and p·v), forward; 3.5 times
    that forward and backward (the backward's five products: s again, dp, dq, dk, dv; kernels
    that recompute s and dp in two sweeps execute more). Bytes: the compulsory HBM traffic,
    each array once at `itemsize` (no re-read of a gathered key, no pooled level, no
    selection): forward q, k, v read, out written, float32 lse written; the backward adds
    q, k, v, out, d_out read, lse read, dq, dk, dv written. A fraction near 1 is that limit;
    both far below it mean the call is bound by neither (latency, occupancy, launches)."""
    batch, tokens, heads, dim = q_shape
    q_elements = batch * tokens * heads * dim
    kv_elements = k_shape[0] * k_shape[1] * k_shape[2] * k_shape[3]
    lse_bytes = 4 * batch * tokens * heads
    forward_flops = 4 * q_elements * keys_per_query
    forward_bytes = itemsize * 2 * (q_elements + kv_elements) + lse_bytes
    backward_bytes = itemsize * 4 * (q_elements + kv_elements) + lse_bytes
    cost = {"fwd": (forward_flops, forward_bytes),
            "fwd_bwd": (3.5 * forward_flops, forward_bytes + backward_bytes)}
    result = {}
    for mode, time_s in seconds.items():
        flops, moved = cost[mode]
        tflops, tb_per_s = flops / time_s / 1e12, moved / time_s / 1e12
        result[mode] = {
            "flops": flops, "bytes": moved, "tflops_per_s": tflops, "tb_per_s": tb_per_s,
            "compute_fraction": tflops / ceilings.tflops if ceilings else None,
            "memory_fraction": tb_per_s / ceilings.hbm_tb_per_s if ceilings else None}
    return result


def device_slug(kind: str | None = None) -> str:
    """'nvidia_h100_80gb_hbm3', 'cpu', ...: the results folder for this machine, or for the
    device named `kind` (a `device_kind` such as "NVIDIA H200")."""
    if kind is None:
        device = jax.devices()[0]
        kind = device.platform if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")


def write_report(report: dict, results_dir: str, name: str) -> pathlib.Path:
    """Writes `report` as JSON to `<results_dir>/<device>/<name>.json`; prints the path."""
    path = pathlib.Path(results_dir) / device_slug() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def median_seconds(fn, args, *, samples: int, warmup: int, sample_seconds: float) -> float:
    """Median time of one call of the compiled `fn(*args)`, measured in back-to-back batches."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    inner = max(1, math.ceil(sample_seconds / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def relative_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ computed in float32 on the device."""
    actual = jnp.asarray(actual, jnp.float32)
    expected = jnp.asarray(expected, jnp.float32)
    return float(jnp.linalg.norm(actual - expected) / jnp.maximum(jnp.linalg.norm(expected),
                                                                   1e-30))


def worst_chunk_error(actual, expected, tokens: int) -> float:
    """The largest `relative_error` over runs of `tokens` consecutive tokens (axis 1 of
    [Bt, N, H, D] arrays; a last partial run counts too), so a few wrong rows show."""
    actual = jnp.asarray(actual, jnp.float32)
    expected = jnp.asarray(expected, jnp.float32)
    pad = -actual.shape[1] % tokens
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (actual.ndim - 2)

    def per_chunk(x):  # -> squared norms [ceil(N / tokens)]
        x = jnp.pad(x, widths)
        x = x.reshape(x.shape[0], -1, tokens, *x.shape[2:])
        return jnp.sum(x ** 2, axis=tuple(i for i in range(x.ndim) if i != 1))

    ratio = per_chunk(actual - expected) / jnp.maximum(per_chunk(expected), 1e-30)
    return float(jnp.sqrt(jnp.max(ratio)))


def vjp_function(forward):
    """(q, k, v, cotangent) -> (dq, dk, dv) of `forward(q, k, v)`."""
    def run(q, k, v, cotangent):
        return jax.vjp(forward, q, k, v)[1](cotangent)
    return run


def inputs(shape, dtype, seed=0):
    """Unit-normal (q, k, v) of `shape` in `dtype` and a cotangent of the same shape."""
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, cotangent = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    return tuple(x.astype(dtype) for x in (q, k, v)), cotangent.astype(dtype)
