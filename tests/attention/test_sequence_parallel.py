"""Sequence-parallel attention (`lla.attention.parallel`) equals the single-device op, forward
and gradients, on P = 4 and 8 forced host devices.

Each case runs in a subprocess (`run_case`), because the host device count is fixed when JAX
starts; the case prints the relative errors of the output (and lse) and of dq, dk, dv
against `dot_product_attention` / `llsa` (implementation "xla") on the gathered sequence.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # f32 relative error
DENSE = {  # name: (devices, causal, heads, kv_heads)
    "dense_p4": (4, False, 3, 3),
    "dense_p4_causal_gqa": (4, True, 3, 1),
    "dense_p8": (8, False, 5, 5),
    "dense_p8_causal": (8, True, 3, 3),
}
LLSA = {  # name: (causal, levels, heads, kv_heads); P = 4, N = 256, block 4, topk 2
    "llsa_p4_levels2": (False, 2, 3, 3),
    "llsa_p4_levels3_gqa": (False, 3, 3, 1),
    "llsa_p4_causal_levels2": (True, 2, 3, 3),
    "llsa_p4_causal_levels3_gqa": (True, 3, 3, 1),
    "llsa_p4_causal_default_levels": (True, None, 2, 2),  # resolved per op: L = 1 causal
}


def case_errors(name: str) -> dict[str, float]:
    """Relative errors of case `name` (run in a process with >= 8 devices)."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from lla import attention
    from lla.attention import parallel

    if name in DENSE:
        devices, causal, heads, kv_heads = DENSE[name]
        tokens = 64
        options = dict(causal=causal, return_residuals=True)
        local = parallel.ring_attention
        single = functools.partial(attention.dot_product_attention, implementation="xla",
                                   **options)
    else:
        devices, (causal, levels, heads, kv_heads) = 4, LLSA[name]
        tokens = 256
        options = dict(block_size=4, topk=2, levels=levels, causal=causal)
        local = parallel.sequence_parallel_llsa
        single = functools.partial(attention.llsa, implementation="xla", **options)
    keys = jax.random.split(jax.random.key(len(name)), 4)
    batch, head_dim = 2, 8
    q = jax.random.normal(keys[0], (batch, tokens, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, tokens, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, tokens, kv_heads, head_dim))
    cotangent = jax.random.normal(keys[3], q.shape)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("sequence",))
    sharded = parallel.sequence_parallel(local, mesh, **options)

    def first(result):
        return result[0] if isinstance(result, tuple) else result

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    def forward_and_grads(fn):
        def loss(q, k, v):
            return jnp.sum(first(fn(q, k, v)) * cotangent)

        result = fn(q, k, v)
        return (result if isinstance(result, tuple) else (result,),
                jax.grad(loss, (0, 1, 2))(q, k, v))

    (got, got_grads), (want, want_grads) = (jax.jit(forward_and_grads, static_argnums=0)(fn)
                                            for fn in (sharded, single))
    errors = {f"out{i}": rel(a, b) for i, (a, b) in enumerate(zip(got, want, strict=True))}
    for label, a, b in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        errors[label] = rel(a, b)
    return errors


def run_case(name: str) -> dict[str, float]:
    """`case_errors(name)` in a fresh process with 8 forced host devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    script = ("import json, sys; from tests.attention.test_sequence_parallel import "
              "case_errors; print(json.dumps(case_errors(sys.argv[1])))")
    run = subprocess.run([sys.executable, "-c", script, name], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(DENSE) + sorted(LLSA))
def test_sequence_parallel_equals_single_device(name):
    errors = run_case(name)
    assert set(errors) >= {"out0", "dq", "dk", "dv"}
    assert max(errors.values()) < TOLERANCE, errors
