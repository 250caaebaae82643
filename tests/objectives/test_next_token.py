"""The next-token objective: weighted cross-entropy, validation nats/byte, samples."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lla import models, objectives
from lla.data import text
from lla.objectives import next_token


def test_token_loss_is_the_weighted_cross_entropy():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    targets = jnp.asarray([[1, 4, 0], [2, 2, 3]])
    weights = jnp.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    total, count = next_token.token_loss(logits, targets, weights)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = -sum(log_probs[b, t, targets[b, t]] for b, t in [(0, 0), (0, 2), (1, 0), (1, 1)])
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    assert float(count) == 4.0


@pytest.fixture(scope="module")
def setup():
    documents = [bytes(f"doc {i}: " + "abcab" * (i + 3), "ascii") for i in range(12)]
    source = text.TokenSource(documents, 32)
    objective = objectives.build("next_token", eval_windows=5, eval_batch_size=2,
                                 sample_count=2, sample_length=10, sample_prompt="doc",
                                 temperature=0.0)
    model = models.build("lm", "tiny", **objective.model_fields(source))
    params = objective.init(model, jax.random.key(0))
    return source, objective, model, params


def test_loss_ignores_targets_of_weight_zero(setup):
    source, objective, model, params = setup
    batch = source.windows(range(4))
    loss, metrics = objective.loss(model, params, batch, jax.random.key(1))
    assert float(metrics["target_tokens"]) == batch["weights"].sum()
    masked = {**batch, "targets": np.where(batch["weights"] > 0, batch["targets"], 7)}
    np.testing.assert_allclose(float(objective.loss(model, params, masked,
                                                    jax.random.key(1))[0]), float(loss))
    flipped = {**batch, "targets": np.where(batch["weights"] > 0, 255 - batch["targets"],
                                            batch["targets"])}
    assert float(objective.loss(model, params, flipped, jax.random.key(1))[0]) != float(loss)


def test_evaluation_reports_validation_nats_and_greedy_samples(setup):
    source, objective, model, params = setup
    evaluation = objective.evaluator(model, source, source)(params, jax.random.key(2))
    batch = source.windows(range(5))
    logits = model.apply(params, batch["tokens"], segment_ids=batch["segment_ids"])
    total, count = next_token.token_loss(logits, batch["targets"], batch["weights"])
    np.testing.assert_allclose(evaluation.scalars["val/nats_per_byte"],
                               float(total / count), rtol=1e-5)
    np.testing.assert_allclose(evaluation.scalars["val/bits_per_byte"],
                               evaluation.scalars["val/nats_per_byte"] / np.log(2))
    samples = evaluation.texts["samples"].split("\n\n----------\n\n")
    assert len(samples) == 2 and all(s.startswith("doc") for s in samples)
    assert samples[0] == samples[1]  # greedy: the same continuation of the same prompt
    assert len(samples[0].encode()) == 3 + 10


def test_no_eval_source_means_no_validation_loss(setup):
    source, objective, model, params = setup
    evaluation = objective.evaluator(model, source)(params, jax.random.key(2))
    assert "val/nats_per_byte" not in evaluation.scalars and evaluation.texts


def test_a_prompt_longer_than_the_context_is_refused(setup):
    source, _, model, _ = setup
    objective = objectives.build("next_token", sample_prompt="x" * 40)
    with pytest.raises(ValueError, match="sample_prompt must be 1 to 31 bytes"):
        objective.evaluator(model, source)


def test_document_inputs_follow_the_op_and_the_batch():
    segments = np.asarray([[1, 1, 1, 2, 2, 0]])
    dense, window = (types.SimpleNamespace(
        attention=name, document_positions=models.get("lm").segment_positions)
        for name in ("dense", "neighborhood"))
    assert next_token.document_inputs(dense, {"tokens": segments}) == {}
    np.testing.assert_array_equal(
        next_token.document_inputs(dense, {"segment_ids": segments})["segment_ids"], segments)
    with pytest.warns(UserWarning, match="cannot mask documents"):
        positions = next_token.document_inputs(window, {"segment_ids": segments})
    assert list(positions) == ["positions"]  # neighborhood cannot mask segments
    np.testing.assert_array_equal(positions["positions"], [[0, 1, 2, 0, 1, 0]])
