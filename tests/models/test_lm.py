"""LM: parameter counts and FLOPs against formulas, cached decoding against the full forward
(dense, every op with `decoding`, and a test op whose cache is unlike dense's), causality with
every causal op, packed documents, grouped-query heads, tied heads, sampling (greedy, top-k,
nucleus), SSA alignment with dense causal attention (`full_mode`) and the errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lla.attention as attention
from lla import models
from lla.attention import registry
from lla.models.lm import (
    LM,
    PRESETS,
    filter_logits,
    generate,
    ops_with,
    prefill,
    segment_positions,
)
from lla.models.lm_decoding import make_decode_step
from lla.objectives.alignment import layer_outputs, mean_alignment_loss
from tests.attention.toy import TOY, TOY_HIERARCHY

SMALL = dict(vocab_size=61, context=48, depth=2, width=32, num_heads=4, num_kv_heads=2)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    """float32 matmuls in full precision on every platform, as the tolerances assume."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def small():
    """(the SMALL model, its parameters, its jitted apply), shared so compilations are too.
    The attention op does not change the parameters: models with other ops reuse them."""
    model = LM(**SMALL)
    return model, init(model), jax.jit(model.apply)


def random_tokens(shape, vocab=SMALL["vocab_size"], seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


def init(model, seed=1):
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))


def init_shapes(model):
    """The parameter tree's shapes, without computing it."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def expected_parameters(vocab, depth, width, heads, kv_heads, hidden, tied):
    head_dim = width // heads
    block = (2 * width * width + 2 * width * kv_heads * head_dim  # q, out; k, v
             + 3 * width * hidden + 2 * width)                     # SwiGLU; two RMSNorms
    return vocab * width * (1 if tied else 2) + depth * block + width


@pytest.mark.parametrize(
    ("preset", "vocab", "tied", "hidden"),
    [("tiny", 256, False, 192),        # 8/3 * 64 = 170.7, rounded up to 192; GQA 4 / 2
     ("S", 256, True, 1024),
     ("gpt2_small", 50304, True, 2048)],
)
def test_parameter_counts_match_the_formula(preset, vocab, tied, hidden):
    model = LM(vocab_size=vocab, tie_embeddings=tied, **PRESETS[preset])
    assert model.hidden == hidden
    shapes = init_shapes(model)
    fields = PRESETS[preset]
    expected = expected_parameters(vocab, fields["depth"], fields["width"], fields["num_heads"],
                                   fields.get("num_kv_heads", fields["num_heads"]), hidden,
                                   tied)
    assert count(shapes) == expected
    if preset == "gpt2_small":
        assert count(shapes) == 123_587_328  # GPT-2 small's "124 M" (tied, SwiGLU 2048)


def test_train_flops_count_block_matmuls_the_head_and_causal_attention():
    """6 · n · (matmul weights of the blocks, counted from the parameter tree) + the head
    6 · n · width · V + causal attention 6 · depth · n² · width."""
    model = LM(**SMALL)
    params = init_shapes(model)["params"]
    block_matmuls = sum(count(params[f"blocks_{i}"][part])
                        for i in range(2) for part in ("attention", "mlp"))
    n = 40
    expected = 6 * n * (block_matmuls + 32 * 61) + 6 * 2 * n * n * 32
    assert model.train_flops_per_example(n) == expected
    assert model.tokens_per_example == 48


def relative_max_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_cached_decoding_equals_the_full_forward(small):
    """Prefill 5 tokens into a 40-slot cache, then 32 single-token steps: each step's logits
    are the full forward's at that position. Key chunks of 16 make the cache's filled part
    end inside a chunk, at its end and past it."""
    model, params, apply = small
    tokens = random_tokens((2, 37))
    prompt = 5
    with attention.tuning("dense", "xla", chunk_q=8, chunk_k=16):
        full = apply(params, tokens)
        logits, cache = jax.jit(prefill, static_argnums=(0, 3))(
            model, params, tokens[:, :prompt], 40)
        step = make_decode_step(model)
        stepped = []
        for position in range(prompt, 37):
            step_logits, cache = step(params, cache, tokens[:, position])
            stepped.append(step_logits)
        assert cache.layers[0].keys.shape == (2, 40, 2, 8)  # dense's KVCache, GQA heads
        assert int(cache.length) == int(cache.layers[1].length) == 37
        assert relative_max_error(logits, full[:, :prompt]) < 1e-5
        # step logits after token t are the forward's logits at position t
        assert relative_max_error(jnp.stack(stepped, axis=1), full[:, prompt:]) < 1e-5
        for position in range(3):  # fill the cache: positions 37, 38, 39
            step_logits, cache = step(params, cache, tokens[:, position])
        assert np.isfinite(step_logits).all()
        assert np.isnan(step(params, cache, tokens[:, 0])[0]).all()  # no position 40


def check_decoding_equals_the_forward(name, params, prompt=16):
    """An LM over op `name` (its example_kwargs) with a 64-token context: a prefill of
    `prompt` tokens, then one step per token up to the context give the full forward's
    logits at every position (f32), the cache keeps its shapes and dtypes, and one step more
    (no position 64) gives NaN logits. Returns the final cache."""
    model = LM(**{**SMALL, "context": 64}, attention=name,
               attention_kwargs=attention.get(name).example_kwargs)
    tokens = random_tokens((2, 64), seed=6)
    full = jax.jit(model.apply)(params, tokens)
    logits, cache = jax.jit(lambda params, prompt: prefill(model, params, prompt, 64))(
        params, tokens[:, :prompt])
    signature = jax.tree.map(lambda x: (x.shape, x.dtype), cache)
    step = make_decode_step(model)
    rows = [logits]
    for position in range(prompt, 64):
        step_logits, cache = step(params, cache, tokens[:, position])
        rows.append(step_logits[:, None])
    assert jax.tree.map(lambda x: (x.shape, x.dtype), cache) == signature  # a scan carry
    assert int(cache.length) == 64
    assert relative_max_error(jnp.concatenate(rows, axis=1), full) < 1e-5
    assert np.isnan(step(params, cache, tokens[:, 0])[0]).all()
    return cache


@pytest.mark.parametrize("name", ops_with("decode"))
def test_every_op_with_decoding_decodes_as_the_forward(small, name):
    check_decoding_equals_the_forward(name, small[1])


def recompute_decoding(attend) -> registry.Decoding:
    """A `Decoding` for any causal op, the slow way: the cache keeps every query, key and value
    (a dict, unlike dense's KVCache; LLSA's keeps queries too) and a step reruns the causal
    forward over the whole buffer and keeps row t (later rows, unfilled, cannot reach it)."""

    def init(batch, capacity, heads, kv_heads, head_dim, dtype, **op_kwargs):
        def zeros(h):
            return jnp.zeros((batch, capacity, h, head_dim), dtype)

        return {"q": zeros(heads), "k": zeros(kv_heads), "v": zeros(kv_heads),
                "length": jnp.zeros((), jnp.int32)}

    def prefill(q, k, v, cache, **op_kwargs):
        buffers = {name: cache[name].at[:, :q.shape[1]].set(x)
                   for name, x in (("q", q), ("k", k), ("v", v))}
        out = attend(q, k, v, causal=True, **op_kwargs)
        return out, {**buffers, "length": jnp.asarray(q.shape[1], jnp.int32)}

    def step(q, k, v, cache, **op_kwargs):
        t = cache["length"]
        buffers = {name: lax.dynamic_update_slice_in_dim(cache[name], x, t, axis=1)
                   for name, x in (("q", q), ("k", k), ("v", v))}
        out = lax.dynamic_slice_in_dim(attend(*buffers.values(), causal=True, **op_kwargs),
                                       t, 1, axis=1)
        out = jnp.where(t < cache["q"].shape[1], out, jnp.nan)
        return out, {**buffers, "length": t + 1}

    return registry.Decoding(init=init, prefill=prefill, step=step)


def test_an_op_with_its_own_cache_and_no_gqa_decodes_through_the_lm(small, monkeypatch):
    """The LM treats op caches as opaque pytrees: the toy op (no gqa: the model repeats kv
    heads, and its cache gets H of them) with a dict cache decodes as its forward, from a
    5-token prompt."""
    op = dataclasses.replace(TOY, name="toy_decoding", decoding=recompute_decoding(TOY.fn))
    monkeypatch.setitem(registry._REGISTRY, op.name, op)
    assert op.name in ops_with("decode")
    cache = check_decoding_equals_the_forward(op.name, small[1], prompt=5)
    assert set(cache.layers[0]) == {"q", "k", "v", "length"}
    assert cache.layers[0]["k"].shape == (2, 64, 4, 8)  # 2 kv heads repeated to 4


CAUSAL_OPS = [name for name in attention.names() if attention.get(name).capabilities.causal]


@pytest.mark.parametrize("name", CAUSAL_OPS)
def test_every_causal_op_keeps_the_lm_causal(small, name):
    """Changing token 9 of 16 changes no logit before position 9, and changes position 9."""
    model = LM(**SMALL, attention=name, attention_kwargs=attention.get(name).example_kwargs)
    params = small[1]
    tokens = random_tokens((2, 16))
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % SMALL["vocab_size"])
    apply = jax.jit(model.apply)
    before, after = apply(params, tokens), apply(params, changed)
    np.testing.assert_allclose(after[:, :9], before[:, :9], rtol=1e-6, atol=1e-6)
    assert np.abs(after[:, 9:] - before[:, 9:]).max() > 1e-3


def aligned(model, params, tokens, full_mode, **inputs):
    """(logits, the blocks' mean alignment term, their AlignedOutputs), jitted."""
    logits, state = jax.jit(lambda params, tokens, full_mode, inputs: model.apply(
        params, tokens, full_mode=full_mode, mutable=["alignment"], **inputs))(
        params, tokens, full_mode, inputs)
    return logits, mean_alignment_loss(state["alignment"]), layer_outputs(state["alignment"])


def test_alignment_is_with_causal_dense_attention(small):
    """Causal top-K keeping every past block is causal dense attention: the term is 0 (a
    non-causal dense branch would make it large). At top-2 it is positive; full mode gives
    the dense LM's logits, sparse mode the top-K LM's."""
    _, params, dense_apply = small
    tokens = random_tokens((2, 40))
    exact = LM(**SMALL, attention="topk_block", attention_kwargs={"block_size": 4, "topk": 10})
    _, term, layers = aligned(exact, params, tokens, True)
    assert len(layers) == SMALL["depth"] and float(term) < 1e-10

    sparse = LM(**SMALL, attention="topk_block", attention_kwargs={"block_size": 4, "topk": 2})
    full_logits, term, _ = aligned(sparse, params, tokens, jnp.bool_(True))
    sparse_logits, _, _ = aligned(sparse, params, tokens, jnp.bool_(False))
    assert 0 < float(term) < np.inf
    assert relative_max_error(full_logits, dense_apply(params, tokens)) < 1e-5
    assert relative_max_error(sparse_logits, jax.jit(sparse.apply)(params, tokens)) < 1e-6
    assert relative_max_error(full_logits, sparse_logits) > 1e-4


def test_alignment_masks_the_dense_branch_with_the_segments(small):
    """Dense aligned with itself over packed documents: zero only when the dense branch gets
    the segment ids too."""
    model, params, _ = small
    tokens = random_tokens((1, 16))
    segment_ids = jnp.asarray([[1] * 7 + [2] * 9], jnp.int32)
    _, term, _ = aligned(model, params, tokens, True, segment_ids=segment_ids)
    assert float(term) == 0.0


def test_segment_positions_restart_at_each_segment():
    ids = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(segment_positions(ids),
                                  [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])


def test_packed_documents_equal_separate_runs(small):
    """Documents of 7 and 9 tokens packed into one row of 16 with segment ids give each
    document's logits when run alone."""
    _, params, apply = small
    first, second = random_tokens((1, 7), seed=2), random_tokens((1, 9), seed=3)
    packed = jnp.concatenate([first, second], axis=1)
    segment_ids = jnp.asarray([[1] * 7 + [2] * 9], jnp.int32)
    logits = apply(params, packed, segment_ids=segment_ids)
    alone = jnp.concatenate([apply(params, first), apply(params, second)], axis=1)
    assert relative_max_error(logits, alone) < 1e-5
    assert relative_max_error(apply(params, packed), alone) > 1e-3  # without segments: mixed


def test_positions_are_relative_and_used(small):
    """RoPE: shifting every position by 5 changes nothing; a gap changes the logits after it."""
    _, params, apply = small
    tokens = random_tokens((1, 16))
    default = apply(params, tokens)
    shifted = apply(params, tokens, positions=jnp.arange(16)[None] + 5)
    gap = apply(params, tokens,
                positions=jnp.concatenate([jnp.arange(6), jnp.arange(10) + 20])[None])
    assert relative_max_error(shifted, default) < 1e-5
    assert relative_max_error(gap[:, :6], default[:, :6]) < 1e-5
    assert relative_max_error(gap[:, 6:], default[:, 6:]) > 1e-4  # ignored positions: ~1e-7


@pytest.mark.parametrize("name", ["dense", TOY.name])  # GQA inside the op / in the model
def test_grouped_query_heads_equal_full_heads_with_each_kv_head_repeated(small, name):
    """Query head h reads kv head h // (H / Hkv): a GQA model equals the MHA model whose k/v
    projections repeat each kv head for its group of query heads."""
    gqa = LM(**SMALL, attention=name)
    mha = LM(**{**SMALL, "num_kv_heads": 4}, attention=name)
    params = small[1]

    def repeat_heads(kernel):  # [C, Hkv * D] -> [C, H * D], head j -> heads 2j, 2j + 1
        width = kernel.shape[0]
        return jnp.repeat(kernel.reshape(width, 2, 8), 2, axis=1).reshape(width, 32)

    def key_or_value(path):
        names = [entry.key for entry in path]
        return "attention" in names and ("key" in names or "value" in names)

    mha_params = jax.tree_util.tree_map_with_path(
        lambda path, x: repeat_heads(x) if key_or_value(path) else x, params)
    assert count(mha_params) > count(params)
    tokens = random_tokens((2, 10))
    np.testing.assert_allclose(jax.jit(gqa.apply)(params, tokens),
                               jax.jit(mha.apply)(mha_params, tokens), rtol=1e-5, atol=1e-5)


def test_tied_head_reads_the_embedding_untied_does_not(small):
    tied, tied_params, _ = small
    untied = LM(**SMALL, tie_embeddings=False)
    shapes = init_shapes(untied)
    assert set(shapes["params"]) - set(tied_params["params"]) == {"head"}
    assert shapes["params"]["head"]["kernel"].shape == (32, 61)
    head = 0.1 * jax.random.normal(jax.random.key(2), (32, 61))
    untied_params = {"params": {**tied_params["params"], "head": {"kernel": head}}}
    tokens = jnp.asarray([[1, 2, 3, 4]], jnp.int32)  # token 60 is never an input

    def moved_row_60(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x.at[60].add(1.0) if path[-1].key == "embedding" else x, params)

    for model, params, changes in ((tied, tied_params, True), (untied, untied_params, False)):
        apply = jax.jit(model.apply)
        before, after = apply(params, tokens), apply(moved_row_60(params), tokens)
        np.testing.assert_array_equal(after[..., :60], before[..., :60])
        assert (np.abs(after[..., 60] - before[..., 60]).max() > 1e-3) == changes


def test_greedy_generate_equals_repeated_argmax_of_the_full_forward(small):
    """Token t + 1 = argmax of the full forward's logits at t, over a buffer of 16 (causal:
    the unfilled tail does not change earlier logits)."""
    model, params, apply = small
    prompt = random_tokens((2, 4), seed=4)
    out = generate(model, params, prompt, jax.random.key(0), steps=12, temperature=0.0)
    sequence = jnp.zeros((2, 16), jnp.int32).at[:, :4].set(prompt)
    for position in range(4, 16):
        logits = apply(params, sequence)[:, position - 1]
        sequence = sequence.at[:, position].set(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(out, sequence)
    assert out.dtype == jnp.int32 and out.shape == (2, 16)


def test_top_k_1_is_greedy_at_any_temperature_and_sampling_follows_the_key(small):
    model, params, _ = small
    prompt = random_tokens((2, 4), seed=4)

    def run(seed, **settings):
        return np.asarray(generate(model, params, prompt, jax.random.key(seed), steps=12,
                                   **settings))

    greedy = run(0, temperature=0.0)  # compiled by the test above
    np.testing.assert_array_equal(run(1, temperature=4.0, top_k=1), greedy)
    sampled = run(2, temperature=4.0)
    np.testing.assert_array_equal(run(2, temperature=4.0), sampled)
    assert not np.array_equal(run(3, temperature=4.0), sampled)


def test_top_p_keeps_the_smallest_set_reaching_p_and_top_k_the_k_largest():
    probs = jnp.asarray([[0.1, 0.5, 0.05, 0.2, 0.15]])
    logits = jnp.log(probs)

    def kept(**settings):
        return set(np.flatnonzero(np.isfinite(filter_logits(logits, **settings)[0])).tolist())

    assert kept(top_p=0.5) == {1}                # 0.5 alone reaches 0.5
    assert kept(top_p=0.69) == {1, 3}            # 0.5 + 0.2 = 0.7
    assert kept(top_p=0.8) == {1, 3, 4}          # 0.85: 0.7 is not enough
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_k=3, top_p=0.6) == {1, 3}    # renormalised: 0.5 / 0.85 = 0.59 < 0.6
    filtered = filter_logits(logits, top_k=2)
    np.testing.assert_array_equal(filtered[0, [1, 3]], logits[0, [1, 3]])  # kept unchanged


def test_non_causal_op_is_rejected_with_the_causal_ones_named():
    model = LM(**SMALL, attention=TOY_HIERARCHY)
    with pytest.raises(ValueError, match=r"'toy_hierarchy' does not declare causal; causal "
                                         r"ops: .*dense"):
        init(model)


def test_decoding_needs_an_op_that_declares_decode(small):
    model = LM(**SMALL, attention="neighborhood", attention_kwargs={"kernel_size": 3})
    with pytest.raises(ValueError, match=r"'neighborhood' does not\. Ops that do: dense"):
        generate(model, small[1], random_tokens((1, 3)), jax.random.key(0), steps=2)


def test_bad_inputs_and_settings_name_what_would_work(small):
    model, params, _ = small
    tokens = random_tokens((1, 8))
    with pytest.raises(ValueError, match="49 tokens exceed the context 48"):
        model.apply(params, random_tokens((1, 49)))
    with pytest.raises(ValueError, match=r"segment_ids must be integer \[B, N\] = \(1, 8\)"):
        model.apply(params, tokens, segment_ids=jnp.ones((1, 7), jnp.int32))
    with pytest.raises(ValueError, match=r"prompt plus 46 steps needs 49 positions"):
        generate(model, params, tokens[:, :3], jax.random.key(0), steps=46)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate(model, params, tokens, jax.random.key(0), steps=2, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_k must be an int in \[0, 61\]"):
        generate(model, params, tokens, jax.random.key(0), steps=2, top_k=62)
    toy = LM(**SMALL, attention=TOY.name)
    with pytest.raises(ValueError, match=r"'toy' does not take segment_ids .*ops that do: dense"):
        toy.apply(params, tokens, segment_ids=jnp.ones((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="num_kv_heads 3 must divide num_heads 4"):
        init(LM(**{**SMALL, "num_kv_heads": 3}))


def test_the_family_is_found_by_name():
    assert "lm" in models.names() and models.get("lm").Model is LM
    model = models.build("lm", preset="gpt2_small", vocab_size=50304)
    assert (model.depth, model.width, model.context, model.hidden) == (12, 768, 2048, 2048)
