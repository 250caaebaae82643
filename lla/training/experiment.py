"""An experiment built from its config: data source, objective, model and optimizer, by name.

    experiment = Experiment.from_config(config)
    mesh = sharding.make_mesh(config)        # ("data", "fsdp", "sequence") from config.mesh
    state = experiment.initial_state(mesh)   # parameters, EMA, optimizer state sharded
    step = experiment.sharded_train_step(mesh, state)
    evaluate = experiment.evaluator(mesh)    # the objective's evaluation, or None

`config.data` names the source (`lla.data.get_source`), the optional `config.eval_data` (same
layout) the held-out source the objective evaluates on, `config.objective` the objective
(`lla.objectives.build`), `config.model` the model family and preset (`lla.models.build`);
the objective adds the model fields that follow from the data; `config.mesh` (optional) the
device mesh and parameter sharding (`lla.training.sharding`). Nothing here knows a model or
an objective by name.

Everything here that runs the model runs under the mesh (`OnMesh`: `jax.set_mesh(mesh)`
around each call, so jit traces there): a model that reads the mesh in context (the DiT's
`sequence_axis`, `docs/sequence_parallel.md`) shards its tokens over `config.mesh.sequence`
in initialisation, the train step and the periodic evaluation alike. On a mesh whose
sequence axis is 1 the mesh changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lla import data, models, objectives
from lla.training import optim, sharding
from lla.training import state as train_state
from lla.training.step import NONFINITE, make_train_step


def _plain(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config in the layout of this version; configs saved before models and objectives
    were chosen by name (pixel DiT runs: top-level `resolution`, `noise_scale`, `sampling`,
    `sample_every`, `model.class_conditional`) are moved into `data.kwargs`, `objective`,
    `eval_every` and `model.name`. Configs already in this layout come back unchanged."""
    if "objective" in config:
        return config
    old = config.to_dict()
    new = {key: value for key, value in old.items()
           if key not in ("resolution", "noise_scale", "sampling", "sample_every")}
    new["eval_every"] = old.get("sample_every", 0)
    new["data"] = {**old["data"], "kwargs": {**old["data"].get("kwargs", {}),
                                            "resolution": old["resolution"]}}
    model = dict(old["model"])
    sampling = old.get("sampling", {})
    new["objective"] = {"name": "flow_matching", "noise_scale": old.get("noise_scale", 0.0),
                        "class_conditional": model.pop("class_conditional", False),
                        "sample_count": sampling.get("count", 16),
                        "sample_steps": sampling.get("steps", 20),
                        "guidance_scale": sampling.get("guidance_scale", 1.0)}
    new["model"] = {"name": "dit", **model}
    return ml_collections.ConfigDict(new)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field and what would work for loop settings no run can
    use (checked before anything is built or written)."""
    minimum = {"batch_size": 1, "total_steps": 1, "log_every": 1, "checkpoint_every": 1,
               "keep_checkpoints": 1, "eval_every": 0, "seed": 0}
    for name, low in minimum.items():
        value = config.get(name)
        if value is None and name == "eval_every":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"config.{name} must be an int >= {low}; got {value!r}")
    sharding.mesh_fields(config)
    if config.get("nonfinite", "stop") not in NONFINITE:
        raise ValueError(f"config.nonfinite must be one of {NONFINITE} (stop the run, or skip "
                         f"the update); got {config.nonfinite!r}")


def model_fields(model_config) -> dict[str, Any]:
    """`config.model` as `lla.models.build` arguments (dtype names become dtypes)."""
    fields = _plain(model_config)
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return fields


@dataclasses.dataclass(frozen=True)
class OnMesh:
    """`fn` called under `jax.set_mesh(mesh)`: a jitted `fn` traces at its first call, so the
    model it runs sees `mesh` (`jax.sharding.get_abstract_mesh()`). `lower(*args)` lowers a
    jitted `fn` under the mesh too (for `.compile().as_text()`). Call it outside `jax.jit`
    (`jax.set_mesh` refuses to be traced)."""

    fn: Callable
    mesh: jax.sharding.Mesh

    def __call__(self, *args, **kwargs):
        """`fn(*args, **kwargs)` under the mesh; same arguments and results as `fn`."""
        with jax.set_mesh(self.mesh):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        """`fn.lower(*args, **kwargs)` (a jitted `fn`) under the mesh."""
        with jax.set_mesh(self.mesh):
            return self.fn.lower(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: ml_collections.ConfigDict
    source: Any
    objective: objectives.Objective
    model: nn.Module
    optimizer: optax.GradientTransformation
    eval_source: Any = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Experiment:
        """Builds everything `config` names (older config layouts are upgraded first)."""
        config = upgrade_config(config)
        check_config(config)
        source = data.get_source(config.data.name, **_plain(config.data.kwargs))
        eval_source = (data.get_source(config.eval_data.name,
                                       **_plain(config.eval_data.get("kwargs", {})))
                       if config.get("eval_data") else None)
        objective = objectives.build(**_plain(config.objective))
        fields, from_data = model_fields(config.model), objective.model_fields(source)
        clash = sorted(set(fields) & set(from_data))
        if clash:
            raise ValueError(f"config.model sets {clash}, which the objective takes from the "
                             f"data ({from_data}); remove them from config.model")
        model = models.build(**fields, **from_data)
        optimizer = optim.make_optimizer(**_plain(config.optimizer))
        return cls(config, source, objective, model, optimizer, eval_source)

    def _create_state(self, key: jax.Array) -> train_state.TrainState:
        return train_state.create(self.objective.init(self.model, key), self.optimizer)

    def min_shard_size(self) -> int:
        """`config.mesh.min_shard_size`: leaves smaller than this stay replicated."""
        return sharding.mesh_fields(self.config)["min_shard_size"]

    def abstract_state(self, mesh) -> train_state.TrainState:
        """The step-0 state as `jax.ShapeDtypeStruct`s carrying their shardings over `mesh`
        (`sharding.state_shardings`); traces the model under `mesh`, computes nothing."""
        shapes = OnMesh(jax.eval_shape, mesh)(self._create_state,
                                              jax.random.key(self.config.seed))
        shardings = sharding.state_shardings(shapes, mesh, self.min_shard_size())
        return jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                            shapes, shardings)

    def initial_state(self, mesh) -> train_state.TrainState:
        """Step-0 train state (parameters from key `config.seed`) over `mesh`: parameters,
        EMA and optimizer moments split over "fsdp" by `sharding.leaf_spec` (replicated when
        fsdp is 1). Initialised under jit straight into those shardings, so no device ever
        holds the whole state. Traced under `mesh` (`OnMesh`)."""
        abstract = self.abstract_state(mesh)
        shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract)
        create = jax.jit(self._create_state, out_shardings=shardings)
        return OnMesh(create, mesh)(jax.random.key(self.config.seed))

    def sharded_train_step(self, mesh, state) -> OnMesh:
        """`train_step()` jitted for `mesh` and traced under it (`OnMesh`: call it, or
        `.lower(state, batch)`): the state keeps the shardings it has (as `initial_state` or
        a restore made them, in and out, donated), the batch [batch_size, ...] is split over
        "data" x "fsdp" (`sharding.batch_sharding`), metrics come back replicated."""
        shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
        step = jax.jit(self.train_step(),
                       in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, sharding.replicated(mesh)),
                       donate_argnums=0)
        return OnMesh(step, mesh)

    def evaluator(self, mesh) -> OnMesh | None:
        """The objective's periodic `evaluate(params, key) -> Evaluation` (its `evaluator`
        on the model, the source and `eval_source`) run under `mesh` (`OnMesh`), so its
        sampler, FID or test batches run the model as the train step does; None when the
        objective has none."""
        evaluate = self.objective.evaluator(self.model, self.source, self.eval_source)
        return None if evaluate is None else OnMesh(evaluate, mesh)

    def train_step(self, seed: int | None = None):
        """`step(state, batch) -> (state, metrics)` (see `make_train_step`)."""
        return make_train_step(self.model, self.objective, self.optimizer,
                               seed=self.config.seed if seed is None else seed,
                               ema=_plain(self.config.ema),
                               nonfinite=self.config.get("nonfinite", "stop"))

    def structural_keys(self) -> tuple[str, ...]:
        """Config keys (dotted prefixes) a resumed run must not change: they change the
        model, its data or what it learns, so old weights would not fit or not mean the
        same (`data`, `model`, the objective's name and its `STRUCTURAL_FIELDS`)."""
        fields = getattr(self.objective, "STRUCTURAL_FIELDS", ())
        return ("data", "model", "objective.name", *(f"objective.{f}" for f in fields))

    # Keys under the structural prefixes that do not change what is learned: where the data
    # lies and how it is read, which implementation computes the attention.
    MOVABLE_KEYS: ClassVar[tuple[str, ...]] = (
        "data.kwargs.path", "data.kwargs.directory", "data.kwargs.verify",
        "data.kwargs.on_error", "model.attention_kwargs.implementation",
        "model.attention_kwargs.interpret")

    def tokens_per_step(self) -> int:
        """Tokens per training step: batch_size x the model's tokens_per_example."""
        return self.config.batch_size * self.model.tokens_per_example
