"""SSA's alignment of a sparse attention op with dense attention (Sparse Sparse Attention,
zhenyi4/ssa), shared by the objectives that train with it (flow matching, next token).

Every attention layer computes the dense ("full") output O_f and the sparse op's output O_s
on the same q, k, v (`lla.layers.attention.align_with_dense`, sown into the collection
`ALIGNMENT`). Each training step draws one forward mode for all layers, full with
probability p (0.5 in SSA), and each layer passes that mode's output on. The loss is

    L = L_task + α · mean over layers [SmoothL1(O_f, sg(O_s)) + SmoothL1(sg(O_f), O_s)]

with sg = stop_gradient, SmoothL1 of β = 1 averaged over the elements (torch's
`smooth_l1_loss` default), α = 10 in SSA: the first term pulls the dense output towards the
sparse one, the second the sparse towards the dense. Evaluation and sampling run the sparse
op alone.

    alignment = Alignment(weight=10.0)
    out, term = alignment.apply(model, params, x, key=step_key, train=True)
    loss, metrics = alignment.add(task_loss, term, metrics)

The objectives take it from their fields `alignment_weight` (α; 0, the default, is off) and
`alignment_full_probability` (p).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lla.layers.attention import ALIGNMENT, AlignedOutputs

# `Alignment.apply` draws the mode from fold_in(step key, MODE_STREAM), leaving the
# objective's own splits of the step key as they are without alignment.
MODE_STREAM = 0x55A


def smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over all elements of SmoothL1(x - y) with β = 1, in float32: 0.5·d² where |d| < 1,
    |d| - 0.5 elsewhere (torch's `smooth_l1_loss(x, y)`); x, y of one shape."""
    return jnp.mean(optax.huber_loss(x.astype(jnp.float32), y.astype(jnp.float32), delta=1.0))


def alignment_loss(full: jax.Array, sparse: jax.Array) -> jax.Array:
    """One layer's term, SmoothL1(O_f, sg(O_s)) + SmoothL1(sg(O_f), O_s): a float32 scalar of
    full = O_f and sparse = O_s, [B, N, H, D] each. Its gradient reaches O_f through the first
    term only and O_s through the second only."""
    return (smooth_l1(full, jax.lax.stop_gradient(sparse))
            + smooth_l1(jax.lax.stop_gradient(full), sparse))


def layer_outputs(sown: Any) -> list[AlignedOutputs]:
    """The `AlignedOutputs` of every layer in a model's sown `ALIGNMENT` collection."""
    return jax.tree.leaves(sown, is_leaf=lambda node: isinstance(node, AlignedOutputs))


def mean_alignment_loss(sown: Any) -> jax.Array:
    """`alignment_loss` averaged over the layers of a sown `ALIGNMENT` collection.

    Raises:
      ValueError: nothing was sown (the model has no aligned attention layer).
    """
    layers = layer_outputs(sown)
    if not layers:
        raise ValueError("alignment: the model sowed no attention outputs; it must pass "
                         "full_mode to its attention layers (lla.layers.attention."
                         "align_with_dense)")
    return sum(alignment_loss(layer.full, layer.sparse) for layer in layers) / len(layers)


class AlignmentTerm(NamedTuple):
    """What one aligned forward pass adds to the loss: `loss`, the layers' mean
    `alignment_loss` (float32 scalar), and `full_mode`, the step's mode (bool scalar)."""

    loss: jax.Array
    full_mode: jax.Array


@dataclasses.dataclass(frozen=True)
class Alignment:
    """The alignment settings of an objective.

    Attributes:
      weight: α, the weight of the alignment term; 0 turns alignment off (the model runs the
        sparse op alone and the loss is the task loss).
      full_probability: p, the probability that a step runs in full mode (dense outputs
        passed on), else sparse mode.
    """

    weight: float = 0.0
    full_probability: float = 0.5

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"alignment_weight must be >= 0 (0 is off); got {self.weight}")
        if not 0.0 <= self.full_probability <= 1.0:
            raise ValueError(f"alignment_full_probability must be in [0, 1]; got "
                             f"{self.full_probability}")

    @property
    def enabled(self) -> bool:
        """Whether the objective trains with the alignment term."""
        return self.weight > 0

    def draw_mode(self, key: jax.Array) -> jax.Array:
        """bool scalar: full mode with probability p, one draw for every layer of the step."""
        return jax.random.bernoulli(key, self.full_probability)

    def apply(self, model: nn.Module, params, *args, key: jax.Array,
              **kwargs) -> tuple[Any, AlignmentTerm | None]:
        """(`model.apply(params, *args, **kwargs)`, None) when off; when on, the model's
        output in the mode drawn from the step's `key` (`full_mode=draw_mode(fold_in(key,
        MODE_STREAM))`) and its `AlignmentTerm`."""
        if not self.enabled:
            return model.apply(params, *args, **kwargs), None
        full_mode = self.draw_mode(jax.random.fold_in(key, MODE_STREAM))
        out, state = model.apply(params, *args, full_mode=full_mode, mutable=[ALIGNMENT],
                                 **kwargs)
        return out, AlignmentTerm(mean_alignment_loss(state[ALIGNMENT]), full_mode)

    def add(self, task_loss: jax.Array, term: AlignmentTerm | None,
            metrics: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        """(task_loss + α · term.loss, metrics with "task_loss", "alignment/loss" and
        "alignment/full_mode" (1.0 in full mode)); (task_loss, metrics) unchanged when off."""
        if term is None:
            return task_loss, metrics
        return task_loss + self.weight * term.loss, {
            **metrics, "task_loss": task_loss, "alignment/loss": term.loss,
            "alignment/full_mode": term.full_mode.astype(jnp.float32)}


class AlignedObjective:
    """Mixin of the objective dataclasses that can train with alignment: they declare the
    fields `alignment_weight` (α; 0, the default, is off) and `alignment_full_probability`
    (p); this checks them at construction and gives their `Alignment`."""

    def __post_init__(self):
        self.alignment  # noqa: B018 - builds the settings, which checks the fields

    @property
    def alignment(self) -> Alignment:
        """The SSA alignment settings of the loss."""
        return Alignment(self.alignment_weight, self.alignment_full_probability)
