"""The attention registry: capability defaults, the ops' own facts, dispatch, tuning
overrides and the dispatch log."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lla.attention as attention
from lla.attention import registry
from tests.attention.op_test_base import random_qkv


def test_capabilities_have_defaults_and_check_their_values():
    caps = attention.Capabilities()
    assert (caps.causal, caps.segments, caps.gqa, caps.decode) == (False,) * 4
    assert caps.trainable and caps.token_order == "any" and caps.spatial_dims == (1, 2, 3)
    with pytest.raises(ValueError, match="token_order 'zorder' is not one of"):
        attention.Capabilities(token_order="zorder")
    with pytest.raises(ValueError, match="spatial_dims"):
        attention.Capabilities(spatial_dims=(4,))


def test_registry_describes_dense():
    op = attention.get("dense")
    assert "dense" in attention.names()
    assert list(op.implementations) == ["cudnn", "xla"]
    assert op.capabilities.causal and op.capabilities.segments and op.capabilities.gqa
    assert "cudnn" in repr(op) and "xla" in repr(op)
    assert attention.get(op) is op
    with pytest.raises(KeyError, match=r"registered: .*dense"):
        attention.get("no-such-op")


@pytest.mark.parametrize("name", ["dense", "llsa", "neighborhood"])
def test_default_and_example_kwargs_are_arguments_of_the_op(name):
    op = attention.get(name)
    parameters = inspect.signature(op.fn).parameters
    for kwargs in (op.default_kwargs, op.example_kwargs):
        assert set(kwargs) <= set(parameters), sorted(set(kwargs) - set(parameters))
        assert "spatial_shape" not in kwargs  # spatial arguments come from the token order


def test_the_ops_declare_their_token_orders():
    assert attention.get("dense").capabilities.token_order == "any"
    assert attention.get("llsa").capabilities.token_order == "hierarchy"
    assert attention.get("neighborhood").capabilities.token_order == "grid"


def test_register_rejects_duplicates_and_missing_reference():
    op = attention.get("dense")
    with pytest.raises(ValueError, match="already registered"):
        attention.register(op)
    nameless = attention.AttentionOp(name="nameless", fn=op.fn,
                                     implementations=[op.implementations["cudnn"]],
                                     summary="x")
    with pytest.raises(ValueError, match="needs an 'xla' reference"):
        attention.register(nameless)


def test_select_names_unknown_and_empty_implementations():
    q, k, v = random_qkv((1, 8, 8, 2, 2, 8))
    with pytest.raises(ValueError, match=r"unknown implementation 'triton'; choose from "
                                         r"\['cudnn', 'xla'\]"):
        attention.dot_product_attention(q, k, v, implementation="triton")
    with pytest.raises(ValueError, match="empty implementation list"):
        attention.dot_product_attention(q, k, v, implementation=())


def test_tuning_overrides_reach_the_implementation_and_nest():
    q, k, v = random_qkv((1, 64, 64, 2, 2, 16))
    static = dict(spatial_shape=(8, 8), kernel_size=3, implementation="pallas_gpu",
                  interpret=True)

    def config():
        with attention.dispatch_log() as log:
            jax.eval_shape(lambda *x: attention.neighborhood(*x, **static), q, k, v)
        (dispatch,) = log
        assert (dispatch.op, dispatch.implementation) == ("neighborhood", "pallas_gpu")
        return dispatch.config

    default = config()
    assert (default.q_tile, default.kv_tile) == ((8, 8), (8, 8))
    with attention.tuning("neighborhood", "pallas_gpu", q_tile=(2, 4)):
        assert config() == dataclasses.replace(default, q_tile=(2, 4))
        with attention.tuning("neighborhood", "pallas_gpu", kv_tile=[4, 2], q_tile=(4, 4)):
            assert config() == dataclasses.replace(default, q_tile=(4, 4), kv_tile=(4, 2))
        assert config().q_tile == (2, 4)
        with attention.tuning("neighborhood", "pallas_tpu", q_tile=(1, 1)):  # another impl
            assert config().q_tile == (2, 4)
    assert config() == default


def test_tuning_changes_the_computation_not_the_result():
    q, k, v = random_qkv((1, 64, 64, 2, 2, 16))
    run = jax.jit(lambda *x: attention.neighborhood(
        *x, spatial_shape=(8, 8), kernel_size=3, implementation="pallas_gpu", interpret=True))
    with attention.dispatch_log() as log, attention.tuning("neighborhood", "pallas_gpu",
                                                           q_tile=(2, 4), kv_tile=(4, 2)):
        tuned = jax.jit(lambda *x: attention.neighborhood(
            *x, spatial_shape=(8, 8), kernel_size=3, implementation="pallas_gpu",
            interpret=True))(q, k, v)
    assert log[0].config.q_tile == (2, 4)
    np.testing.assert_allclose(tuned, run(q, k, v), rtol=1e-5, atol=1e-6)


def test_tuning_rejects_what_does_not_exist():
    cases = [
        (ValueError, r"unknown tuning field\(s\) \['tile'\]; fields: q_tile, kv_tile",
         ("neighborhood", "pallas_gpu"), {"tile": (8, 8)}),
        (ValueError, "'cudnn' has no tuning knobs", ("dense", "cudnn"), {"chunk": 8}),
        (ValueError, "unknown implementation 'pallas_gpu'", ("dense", "pallas_gpu"),
         {"chunk_q": 8}),
        (KeyError, "no attention op 'nope'", ("nope", "xla"), {}),
    ]
    for error, message, names, values in cases:
        with pytest.raises(error, match=message), attention.tuning(*names, **values):
            pass


def test_bad_tuning_values_raise_with_the_field_named():
    q, k, v = random_qkv((1, 64, 64, 2, 2, 16))
    with attention.tuning("llsa", "pallas_gpu", query_blocks=3), pytest.raises(
            ValueError, match="query_blocks 3 must divide block_size 4"):
        attention.llsa(q, k, v, block_size=4, topk=2, implementation="pallas_gpu",
                       interpret=True)
    with attention.tuning("neighborhood", "pallas_gpu", q_tile=8), pytest.raises(
            ValueError, match="q_tile must be one int per spatial axis"):
        attention.neighborhood(q, k, v, spatial_shape=(8, 8), kernel_size=3,
                               implementation="pallas_gpu", interpret=True)


def test_dense_xla_chunks_are_a_tuning_config():
    """Small chunks through `tuning` give the same attention (and really are used)."""
    q, k, v = random_qkv((1, 50, 70, 2, 1, 8))
    expected = attention.dot_product_attention(q, k, v, causal=True, implementation="xla")
    with attention.tuning("dense", "xla", chunk_q=8, chunk_k=16), \
            attention.dispatch_log() as log:
        out = attention.dot_product_attention(q, k, v, causal=True, implementation="xla")
    assert (log[0].config.chunk_q, log[0].config.chunk_k) == (8, 16)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_dispatch_log_records_the_dispatched_implementation():
    """float32 inputs: cuDNN declines them on every platform, so dispatch falls back to xla,
    whose config the log holds; nothing is recorded outside the block."""
    q, k, v = random_qkv((1, 16, 16, 2, 2, 8))
    with attention.dispatch_log() as log:
        attention.dot_product_attention(q, k, v)
        attention.dot_product_attention(q, k, v, implementation=("cudnn", "xla"))
    assert [(d.op, d.implementation) for d in log] == [("dense", "xla")] * 2
    assert log[0].config == attention.get("dense").implementations["xla"].tunable.default(
        q, k, v)
    attention.dot_product_attention(q, k, v)
    assert len(log) == 2


def neighborhood_kernel(*x):
    return attention.neighborhood(*x, spatial_shape=(8, 8), kernel_size=3,
                                  implementation="pallas_gpu", interpret=True)


def test_tuning_applies_to_jitted_functions_wherever_they_were_traced():
    """Overrides are part of jit's cache key: a function jitted (and called) outside a block
    runs with the overrides inside it, and one traced inside runs with defaults outside."""
    q, k, v = random_qkv((1, 64, 64, 2, 2, 16))
    run = jax.jit(neighborhood_kernel)
    with attention.dispatch_log() as log:
        run(q, k, v)
        with attention.tuning("neighborhood", "pallas_gpu", q_tile=(2, 4)):
            run(q, k, v)
            run(q, k, v)  # cached: no new dispatch
        run(q, k, v)  # back to the default's cache entry
    assert [d.config.q_tile for d in log] == [(8, 8), (2, 4)]
    traced_inside = jax.jit(lambda *x: neighborhood_kernel(*x))  # a new function: own cache
    with attention.tuning("neighborhood", "pallas_gpu", q_tile=(4, 2)):
        traced_inside(q, k, v)
    with attention.dispatch_log() as log:
        traced_inside(q, k, v)
    assert [d.config.q_tile for d in log] == [(8, 8)]


def test_tuning_values_are_checked_and_made_hashable():
    q, k, v = random_qkv((1, 64, 64, 2, 2, 16))
    with attention.tuning("neighborhood", "pallas_gpu", q_tile=np.array([2, 4]),
                          num_warps=np.int64(2)), attention.dispatch_log() as log:
        jax.eval_shape(neighborhood_kernel, q, k, v)
    assert (log[0].config.q_tile, log[0].config.num_warps) == ((2, 4), 2)
    for value in (0, -1, 2.0, True, "8", (4, 0)):
        with pytest.raises(ValueError, match="must be a positive int or a sequence"), \
                attention.tuning("neighborhood", "pallas_gpu", q_tile=value):
            pass


@dataclasses.dataclass(frozen=True)
class Blocks:
    block: int = 4


def blocked_op() -> attention.AttentionOp:
    """An unregistered op whose tunable "fast" implementation needs N divisible by `block`."""
    def reasons(q, k, v, *, config):
        return [] if q.shape[1] % config.block == 0 else [
            f"N={q.shape[1]} is not a multiple of block {config.block}"]

    fast = attention.Implementation(
        "fast", lambda q, k, v, *, config: q, reasons,
        tunable=attention.Tunable(lambda *args, **kwargs: Blocks(), ("block",)))
    return attention.AttentionOp(
        name="blocked", fn=None, summary="test",
        implementations=[fast, attention.Implementation("xla", lambda q, k, v: v)])


def test_an_implementation_with_overrides_is_not_skipped_silently():
    """Without overrides dispatch moves on to the next implementation; with overrides active
    an implementation that targets this platform but cannot run the inputs raises."""
    op = blocked_op()
    q, k, v = (jnp.full((1, 6, 1, 4), float(i)) for i in range(3))
    assert registry.call(op, None, q, k, v) is v
    with attention.tuning(op, "fast", block=3):
        assert registry.call(op, None, q, k, v) is q
    with attention.tuning(op, "fast", block=4), pytest.raises(
            attention.NoImplementationError, match="tuning overrides for 'fast' are active "
                                                   "but it cannot run these inputs with them: "
                                                   "N=6 is not a multiple of block 4"):
        registry.call(op, None, q, k, v)


def test_nested_dispatch_logs_both_record():
    q, k, v = random_qkv((1, 16, 16, 2, 2, 8))
    with attention.dispatch_log() as outer:
        attention.dot_product_attention(q, k, v)
        with attention.dispatch_log() as inner:
            attention.dot_product_attention(q, k, v)
    assert (len(outer), len(inner)) == (2, 1)


def test_llsa_default_kwargs_are_its_signature_defaults():
    parameters = inspect.signature(attention.llsa).parameters
    for key, value in attention.get("llsa").default_kwargs.items():
        assert parameters[key].default == value


def noop_decoding() -> registry.Decoding:
    return registry.Decoding(init=lambda *shape, **kwargs: None,
                             prefill=lambda q, k, v, cache, **kwargs: (q, cache),
                             step=lambda q, k, v, cache, **kwargs: (q, cache))


def test_decoding_sets_the_decode_flag_and_is_checked():
    """`capabilities.decode` follows from `decoding`: set by it (also through
    dataclasses.replace), an error without it; decoding needs a causal op."""
    op = attention.get("dense")
    causal = attention.Capabilities(causal=True)
    decoding = noop_decoding()
    with_decoding = dataclasses.replace(op, name="x", capabilities=causal, decoding=decoding)
    assert with_decoding.capabilities.decode and with_decoding.decoding is decoding
    assert dataclasses.replace(with_decoding, name="y").capabilities.decode
    assert not dataclasses.replace(op, capabilities=causal, decoding=None).capabilities.decode
    with pytest.raises(ValueError, match="declare decode but the op has no decoding"):
        dataclasses.replace(op, decoding=None)
    with pytest.raises(ValueError, match="decoding is causal attention, token by token"):
        dataclasses.replace(op, capabilities=attention.Capabilities(), decoding=decoding)
    with pytest.raises(ValueError, match="decoding must be a Decoding"):
        dataclasses.replace(op, decoding=(decoding.init, decoding.prefill, decoding.step))


DECODING_OPS = [name for name in attention.names() if attention.get(name).decoding is not None]


@pytest.mark.parametrize("name", DECODING_OPS)
def test_every_decoding_reproduces_the_causal_forward(name):
    """For every registered op with `decoding`, at its example_kwargs on 64 tokens: a prefill
    of 16 then 48 jitted steps give the rows of `op(q, k, v, causal=True)` (f32), every step
    keeps the cache's shapes and dtypes (a scan carry) and compiles once, and a step with a
    full cache outputs NaN."""
    op = attention.get(name)
    kwargs = dict(op.example_kwargs)
    kv_heads = 2 if op.capabilities.gqa else 4
    q, k, v = random_qkv((2, 64, 64, 4, kv_heads, 16), seed=5)
    traces = []

    def step(q, k, v, cache):
        traces.append(None)
        return op.decoding.step(q, k, v, cache, **kwargs)

    step = jax.jit(step)
    with jax.default_matmul_precision("highest"):
        expected = op(q, k, v, causal=True, **kwargs)
        empty = op.decoding.init(2, 64, 4, kv_heads, 16, jnp.float32, **kwargs)
        out, cache = jax.jit(lambda *x: op.decoding.prefill(*x, **kwargs))(
            q[:, :16], k[:, :16], v[:, :16], empty)
        rows = [out]
        for t in range(16, 64):
            out, cache = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], cache)
            rows.append(out)
        past, _ = step(q[:, :1], k[:, :1], v[:, :1], cache)
    signature = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), empty)
    assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), cache) == signature
    assert len(traces) == 1
    decoded = np.asarray(jnp.concatenate(rows, axis=1), np.float64)
    reference = np.asarray(expected, np.float64)
    assert np.linalg.norm(decoded - reference) / np.linalg.norm(reference) < 1e-5
    assert np.isnan(past).all()
