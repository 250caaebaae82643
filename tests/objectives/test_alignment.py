"""SSA alignment (`lla.objectives.alignment`): the SmoothL1 term and its stop-gradients against
hand-written formulas, the layer mean, the mode draw, the flow-matching and next-token losses
with it, and one train step of `configs/llsa_pixel.py:alignment=10` (on; and off, where the
step is today's: same numbers, no dense attention traced)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import llsa_pixel
from lla import attention, data, models, objectives
from lla.data import text
from lla.layers.attention import AlignedOutputs
from lla.objectives import flow_matching, next_token
from lla.objectives.alignment import (
    MODE_STREAM,
    Alignment,
    alignment_loss,
    mean_alignment_loss,
    smooth_l1,
)
from lla.training import sharding
from lla.training.experiment import Experiment
from tests.models.test_dit import perturbed

# differences full - sparse in both regions of SmoothL1: |d| < 1 quadratic, else linear
FULL = jnp.asarray([[0.3, -0.5, 2.0], [1.0, -4.0, 0.0]])
SPARSE = jnp.asarray([[0.0, 0.25, -0.5], [1.9, -1.5, 0.0]])


def hand_smooth_l1(d):
    d = np.asarray(d, np.float64)
    return np.mean(np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5))


def hand_derivative(d):
    """d/dd of hand_smooth_l1's summand, divided by the element count (the mean)."""
    d = np.asarray(d, np.float64)
    return np.clip(d, -1.0, 1.0) / d.size


def test_smooth_l1_is_quadratic_below_one_and_linear_above():
    d = np.asarray(FULL - SPARSE)  # 0.3, -0.75, 2.5, -0.9, -2.5, 0
    assert (np.abs(d) < 1).any() and (np.abs(d) > 1).any()
    expected = (0.045 + 0.28125 + 2.0 + 0.405 + 2.0 + 0.0) / 6
    np.testing.assert_allclose(hand_smooth_l1(d), expected, rtol=1e-6)
    np.testing.assert_allclose(smooth_l1(FULL, SPARSE), expected, rtol=1e-6)
    np.testing.assert_allclose(alignment_loss(FULL, SPARSE), 2 * expected, rtol=1e-6)
    assert alignment_loss(FULL, FULL) == 0.0
    low = alignment_loss(FULL.astype(jnp.bfloat16), SPARSE.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32


def test_each_output_gets_the_gradient_of_its_own_term_only():
    """d/dO_f comes from SmoothL1(O_f, sg(O_s)) alone and d/dO_s from SmoothL1(sg(O_f), O_s)
    alone: each is one SmoothL1 derivative (two without a stop-gradient, zero with it on the
    wrong side)."""
    d = np.asarray(FULL - SPARSE)
    grad_full, grad_sparse = jax.grad(alignment_loss, argnums=(0, 1))(FULL, SPARSE)
    np.testing.assert_allclose(grad_full, hand_derivative(d), rtol=1e-6)
    np.testing.assert_allclose(grad_sparse, hand_derivative(-d), rtol=1e-6)
    # each term's gradient, as the one-term SmoothL1 with the other output held constant
    first = jax.grad(lambda f: smooth_l1(f, SPARSE))(FULL)
    second = jax.grad(lambda s: smooth_l1(FULL, s))(SPARSE)
    np.testing.assert_allclose(grad_full, first, rtol=1e-6)
    np.testing.assert_allclose(grad_sparse, second, rtol=1e-6)


def test_the_loss_of_several_layers_is_their_mean():
    ones = jnp.ones((1, 2, 1, 2))
    sown = {"block0": {"attention": {"outputs": (AlignedOutputs(0.5 * ones, 0 * ones),)}},
            "block1": {"attention": {"outputs": (AlignedOutputs(3 * ones, 0 * ones),)}}}
    # layer terms 2 · 0.125 and 2 · 2.5
    np.testing.assert_allclose(mean_alignment_loss(sown), (0.25 + 5.0) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="sowed no attention outputs"):
        mean_alignment_loss({})


def test_the_mode_is_full_with_probability_p():
    keys = jax.random.split(jax.random.key(0), 4000)
    for p in (0.5, 0.2):
        draws = jax.vmap(Alignment(1.0, p).draw_mode)(keys)
        assert draws.dtype == jnp.bool_
        assert abs(float(draws.mean()) - p) < 0.03
    assert not jax.vmap(Alignment(1.0, 0.0).draw_mode)(keys).any()
    assert jax.vmap(Alignment(1.0, 1.0).draw_mode)(keys).all()


@pytest.mark.parametrize(("fields", "match"), [
    ({"alignment_weight": -1.0}, "alignment_weight must be >= 0"),
    ({"alignment_full_probability": 1.5}, r"alignment_full_probability must be in \[0, 1\]"),
])
def test_bad_alignment_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        objectives.build("flow_matching", **fields)


# ---- the objectives with alignment ----------------------------------------------------------

@pytest.fixture(scope="module")
def dit():
    """A tiny DiT with LLSA on 8 x 8 images, random non-zero parameters and a batch."""
    source = data.get_source("procedural", resolution=8)
    plain = flow_matching.Objective()
    model = models.build("dit", "tiny", attention="llsa",
                         attention_kwargs={"block_size": 4, "topk": 2},
                         **plain.model_fields(source))
    params = jax.jit(perturbed)(plain.init(model, jax.random.key(0)))
    batch = {name: jnp.asarray(value)
             for name, value in next(data.batches(source, batch_size=4, seed=0)).items()}
    return model, params, batch


def mode_of(key):
    return Alignment(1.0).draw_mode(jax.random.fold_in(key, MODE_STREAM))


def test_flow_matching_adds_alpha_times_the_layer_mean_and_reports_it(dit):
    """The loss of the drawn mode's forward (velocity from the dense branch in full mode, the
    sparse one in sparse mode: the task losses differ) plus α · the mean alignment term;
    both modes occur."""
    model, params, batch = dit
    objective = flow_matching.Objective(alignment_weight=10.0)

    @partial(jax.jit, static_argnums=2)
    def expected(params, key, full):
        loss_key, dropout_key = jax.random.split(key)
        sown = []

        def apply(x, t, labels):
            out, state = model.apply(params, x, t, labels, train=True, full_mode=full,
                                     mutable=["alignment"],
                                     rngs={"label_dropout": dropout_key})
            sown.append(state["alignment"])
            return out

        task, _ = flow_matching.loss(apply, batch["image"], loss_key, scale=1.0)
        return task, mean_alignment_loss(sown[0])

    loss = jax.jit(partial(objective.loss, model))
    tasks = {full: expected(params, jax.random.key(0), full)[0] for full in (False, True)}
    assert abs(float(tasks[True]) - float(tasks[False])) > 1e-4
    seen = set()
    for seed in range(8):
        key = jax.random.key(seed)
        full = bool(mode_of(key))
        if full in seen:
            continue
        seen.add(full)
        value, metrics = loss(params, batch, key)
        task, term = expected(params, key, full)
        assert float(term) > 1e-4
        assert set(metrics) == {"task_loss", "alignment/loss", "alignment/full_mode"}
        np.testing.assert_allclose(metrics["task_loss"], task, rtol=1e-5)
        np.testing.assert_allclose(metrics["alignment/loss"], term, rtol=1e-5)
        assert float(metrics["alignment/full_mode"]) == float(full)
        np.testing.assert_allclose(value, task + 10.0 * term, rtol=1e-5)
    assert seen == {True, False}


def test_sampling_with_alignment_runs_the_sparse_op_only(dit):
    model, params, _ = dit
    objective = flow_matching.Objective(alignment_weight=10.0)
    sample = objective.sampler(model, count=2, steps=1)
    with attention.dispatch_log() as log:
        jax.eval_shape(sample, params, jax.random.key(0))
    assert log and {entry.op for entry in log} == {"llsa"}


def test_next_token_adds_alpha_times_the_term_of_dense_causal_alignment():
    documents = [bytes(f"doc {i}: " + "abcab" * (i + 3), "ascii") for i in range(6)]
    source = text.TokenSource(documents, 32)
    objective = next_token.Objective(alignment_weight=10.0, alignment_full_probability=1.0)
    model = models.build("lm", "tiny", attention="topk_block",
                         attention_kwargs={"block_size": 4, "topk": 2},
                         **objective.model_fields(source))
    params = objective.init(model, jax.random.key(0))
    batch = {name: value for name, value in source.windows(range(2)).items()
             if name != "segment_ids"}  # rows attend across documents: no segments to mask
    key = jax.random.key(1)
    with attention.dispatch_log() as log:
        value, metrics = jax.jit(partial(objective.loss, model))(params, batch, key)
    assert {entry.op for entry in log} == {"topk_block", "dense"}
    logits, state = jax.jit(partial(model.apply, full_mode=True, mutable=["alignment"]))(
        params, batch["tokens"])
    dense = models.build("lm", "tiny", **objective.model_fields(source))
    np.testing.assert_allclose(logits, jax.jit(dense.apply)(params, batch["tokens"]),
                               rtol=1e-4, atol=1e-5)
    total, count = next_token.token_loss(logits, batch["targets"], batch["weights"])
    term = mean_alignment_loss(state["alignment"])
    assert float(term) > 0 and float(metrics["alignment/full_mode"]) == 1.0
    np.testing.assert_allclose(metrics["task_loss"], total / count, rtol=1e-5)
    np.testing.assert_allclose(value, total / count + 10.0 * term, rtol=1e-5)
    assert float(metrics["target_tokens"]) == float(count)


# ---- one train step of the config -----------------------------------------------------------

def experiment(arg: str) -> Experiment:
    """configs/llsa_pixel.py:<arg> on 8 x 8 images with LLSA block 4, top-2."""
    config = llsa_pixel.get_config(arg)
    config.data.kwargs.resolution = 8
    config.model.attention_kwargs.block_size = 4
    config.model.attention_kwargs.topk = 2
    config.optimizer.warmup_steps = 0
    return Experiment.from_config(config)


def step_once(experiment: Experiment):
    """(state before, state after, metrics) of one jitted train step on a fixed batch."""
    state = experiment.initial_state(sharding.data_mesh())
    batch = {key: jnp.asarray(value) for key, value in
             next(data.batches(experiment.source, batch_size=8, seed=0)).items()}
    step = jax.jit(experiment.train_step())
    after, metrics = step(state, batch)
    return state, after, metrics, batch


def query_gradient(objective_loss, params, batch, key):
    """The loss's gradient wrt block 0's query kernel: at adaLN-Zero init (attention gates 0)
    the task loss's does not reach q, k, v, the alignment term's does."""
    grads = jax.jit(jax.grad(lambda params: objective_loss(params, batch, key)[0]))(params)
    return grads["params"]["block0"]["attention"]["query"]["kernel"]


def test_a_train_step_with_alignment_lowers_the_loss():
    """The objective's loss (task + 10 · alignment) at the step's key falls after the step,
    and the alignment term's gradient reaches the attention projections."""
    aligned = experiment("alignment=10")
    assert aligned.objective.alignment == Alignment(10.0, 0.5)
    before, after, metrics, batch = step_once(aligned)
    assert {"task_loss", "alignment/loss", "alignment/full_mode"} <= set(metrics)
    assert float(metrics["alignment/loss"]) > 0
    key = jax.random.fold_in(jax.random.key(aligned.config.seed), 0)  # step 0's key
    loss = jax.jit(partial(aligned.objective.loss, aligned.model))
    value, _ = loss(before.params, batch, key)
    np.testing.assert_allclose(value, metrics["loss"], rtol=1e-6)
    later, later_metrics = loss(after.params, batch, key)
    assert float(later) < float(value)
    assert float(later_metrics["alignment/loss"]) < float(metrics["alignment/loss"])
    assert float(jnp.abs(query_gradient(loss, before.params, batch, key)).max()) > 1e-6


class TodaysFlowMatching(flow_matching.Objective):
    """The flow-matching batch loss as it was before alignment existed."""

    def loss(self, model, params, batch, key):
        loss_key, dropout_key = jax.random.split(key)

        def apply(x, timesteps, labels):
            return model.apply(params, x, timesteps, labels, train=True,
                               rngs={"label_dropout": dropout_key})

        return flow_matching.loss(apply, batch["image"], loss_key, scale=self.scale(model))[0], {}


def test_without_alignment_the_step_is_todays_and_traces_no_dense_attention():
    off = experiment("")
    assert off.objective.alignment_weight == 0.0
    with attention.dispatch_log() as log:
        before, state, metrics, batch = step_once(off)
    assert log and {entry.op for entry in log} == {"llsa"}
    assert set(metrics) == {"loss", "grad_norm", "nonfinite"}
    loss = partial(off.objective.loss, off.model)
    key = jax.random.fold_in(jax.random.key(off.config.seed), 0)
    np.testing.assert_array_equal(query_gradient(loss, before.params, batch, key), 0.0)
    today = Experiment(off.config, off.source, TodaysFlowMatching(), off.model, off.optimizer)
    _, expected, expected_metrics, _ = step_once(today)
    for name, value in expected_metrics.items():
        np.testing.assert_array_equal(metrics[name], value)
    for leaf, expected_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(expected),
                                   strict=True):
        np.testing.assert_array_equal(leaf, expected_leaf)
