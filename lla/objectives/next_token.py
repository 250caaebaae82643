"""Next-token prediction for language models: the objective "next_token".

The model is called as `model.apply(params, tokens int32 [B, N], segment_ids=int32 [B, N],
train=...) -> logits [B, N, vocab_size]` (`lla.models.lm`; ops that cannot mask segments get
per-document `positions` instead, `document_inputs`, from `model.document_positions`), and
samples with `model.generate`, on batches of
`lla.data.text.TokenSource`; the loss is the softmax cross-entropy of each target byte,
averaged over the target slots whose weight is 1 (padding and the byte after a document's end
do not count). With byte-level tokens, nats per token are nats per byte.

Periodic evaluation (on the EMA weights): the same loss over the first `eval_windows` packed
windows of the validation source (`config.eval_data`), reported as `val/nats_per_byte` and
`val/bits_per_byte`, and `sample_count` texts generated from `sample_prompt` with the KV
cache (`lla.models.lm_decoding.generate`), written to `<workdir>/samples/step_<step>.txt`
(only with attention ops that declare `decode`).

With `alignment_weight` > 0 the loss adds SSA's alignment of the model's sparse attention with
dense causal attention (`lla.objectives.alignment`); evaluation and sampling run the sparse op
alone.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import lla.attention
from lla.objectives.alignment import AlignedObjective
from lla.objectives.base import Evaluation


def token_loss(logits: jax.Array, targets: jax.Array,
               weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted cross-entropies, sum of weights) in float32; logits [B, N, V],
    targets int [B, N], weights [B, N]."""
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets)
    weights = weights.astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(weights)


def document_inputs(model: nn.Module, batch) -> dict[str, jax.Array]:
    """How the model sees the documents of a batch: `segment_ids` when its attention op can
    mask them, else only `positions` restarting at each document (the documents of a packed
    row then see each other; with Dataset Decomposition every row is one document)."""
    if "segment_ids" not in batch:  # one document per row, or masking turned off
        return {}
    if lla.attention.get(model.attention).capabilities.segments:
        return {"segment_ids": batch["segment_ids"]}
    warnings.warn(f"attention {model.attention!r} cannot mask documents (segment_ids): "
                  f"documents packed into one row see each other; train with Dataset "
                  f"Decomposition (one document per row) to avoid it", stacklevel=2)
    return {"positions": model.document_positions(jnp.asarray(batch["segment_ids"]))}


@dataclasses.dataclass(frozen=True)
class Objective(AlignedObjective):
    """Next-token cross-entropy for byte-level LMs with fields vocab_size and context.

    Attributes:
      eval_windows: validation windows per evaluation (0: no validation loss).
      eval_batch_size: windows per jitted validation call.
      sample_count, sample_length: generated texts per evaluation and their new bytes.
      sample_prompt: the text every sample continues.
      temperature, top_k, top_p: the sampler (`lla.models.lm_decoding.generate`).
      alignment_weight, alignment_full_probability: SSA alignment (`Alignment`): α (0 is
        off; SSA uses 10) and the probability p of a full-mode step.
    """

    STRUCTURAL_FIELDS: ClassVar[tuple[str, ...]] = ()

    eval_windows: int = 64
    eval_batch_size: int = 8
    sample_count: int = 2
    sample_length: int = 200
    sample_prompt: str = "\n"
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    alignment_weight: float = 0.0
    alignment_full_probability: float = 0.5

    def model_fields(self, source) -> dict[str, Any]:
        """vocab_size and context (the longest row) of the token source."""
        return {"vocab_size": source.vocab_size, "context": source.sequence_length}

    def init(self, model: nn.Module, key: jax.Array):
        """Parameters of `model` initialised on one row of zeros of its context length."""
        tokens = jnp.zeros((1, model.context), jnp.int32)
        return jax.jit(model.init)(key, tokens)

    def loss(self, model: nn.Module, params, batch, key: jax.Array):
        """Mean cross-entropy over the weighted targets of the batch (module docstring), plus
        α times the alignment term with alignment (`Alignment.add`)."""
        logits, term = self.alignment.apply(
            model, params, batch["tokens"], key=key, **document_inputs(model, batch),
            train=True, rngs={"dropout": key})
        total, count = token_loss(logits, batch["targets"], batch["weights"])
        return self.alignment.add(total / jnp.maximum(count, 1.0), term,
                                  {"target_tokens": count})

    def evaluator(self, model: nn.Module, source, eval_source=None):
        """Validation nats/byte on `eval_source` (skipped without one) and generated texts."""
        prompt = np.frombuffer(self.sample_prompt.encode(), np.uint8).astype(np.int32)
        if not 1 <= len(prompt) < model.context:
            raise ValueError(f"next_token: sample_prompt must be 1 to {model.context - 1} "
                             f"bytes; got {len(prompt)}")
        steps = min(self.sample_length, model.context - len(prompt))
        if not lla.attention.get(model.attention).capabilities.decode:
            steps = 0  # no KV-cache decoding with this op: validation loss only

        @jax.jit
        def window_loss(params, batch):
            logits = model.apply(params, batch["tokens"], **document_inputs(model, batch))
            return token_loss(logits, batch["targets"], batch["weights"])

        def evaluate(params, key):
            scalars = {}
            windows = 0 if eval_source is None else min(self.eval_windows,
                                                        eval_source.num_examples)
            if windows:
                total = count = 0.0
                starts = range(0, windows, self.eval_batch_size)
                for first in tqdm(starts, desc="validation", leave=False,
                                  disable=len(starts) < 8):
                    batch = eval_source.windows(range(first, min(first + self.eval_batch_size,
                                                                 windows)))
                    loss_sum, weight_sum = window_loss(params, batch)
                    total, count = total + float(loss_sum), count + float(weight_sum)
                scalars["val/nats_per_byte"] = total / max(count, 1.0)
                scalars["val/bits_per_byte"] = scalars["val/nats_per_byte"] / math.log(2)
            texts = {}
            if self.sample_count and steps > 0:
                prompts = np.broadcast_to(prompt, (self.sample_count, len(prompt)))
                generated = np.asarray(model.generate(
                    params, jnp.asarray(prompts), key, steps=steps,
                    temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                    cache_length=len(prompt) + steps))
                texts["samples"] = "\n\n----------\n\n".join(
                    bytes(row.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
                    for row in generated)
            return Evaluation(scalars, {}, texts)

        return evaluate
