"""Helpers shared by the experiment configs: the `file.py:key=value,...` argument parser and
checks that name what would work."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ml_collections

import lla.attention


def parse(arg: str | None, defaults: Mapping[str, object]) -> dict[str, object]:
    """'res=64,attention=dense' -> {'res': 64, 'attention': 'dense', <other defaults>}.

    Every key must be one of `defaults`; a value is converted to the type of its default
    (int, float, bool or str; a None default takes strings).

    Raises:
      ValueError: a malformed item, an unknown key (listing the known ones) or a value that
        does not convert.
    """
    options = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ValueError(f"config argument {item!r}: expected key=value")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: "
                             f"{', '.join(defaults)}")
        kind = str if defaults[key] is None else type(defaults[key])
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                options[key] = value.lower() in ("true", "1")
            else:
                options[key] = kind(value)
        except ValueError:
            raise ValueError(f"config argument {key}={value!r}: expected a "
                             f"{kind.__name__}") from None
    return options


def choose(key: str, value, choices: Iterable) -> None:
    """Raises ValueError naming the choices unless `value` is one of them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{key}={value}: choose one of {', '.join(map(str, choices))}")


def attention(name: str) -> tuple[str, dict]:
    """(name, the op's default keyword arguments) of a registered attention op."""
    choose("attention", name, lla.attention.names())
    return name, dict(lla.attention.get(name).default_kwargs)


def alignment(weight: float, attention_name: str) -> dict[str, float]:
    """The objective's SSA alignment fields (`lla.objectives.alignment`) for the config
    argument `alignment=<α>`: {"alignment_weight": α, "alignment_full_probability": 0.5}.
    α = 0 is off; SSA trains with 10.

    Raises:
      ValueError: α < 0, or α > 0 with dense attention (nothing sparse to align).
    """
    if weight < 0:
        raise ValueError(f"alignment={weight}: use 0 (off) or a positive weight, e.g. 10")
    if weight and attention_name == "dense":
        raise ValueError(f"alignment={weight} aligns a sparse op with dense attention; "
                         f"attention=dense is dense already: choose a sparse op, e.g. "
                         f"attention=llsa")
    return {"alignment_weight": float(weight), "alignment_full_probability": 0.5}


def mesh() -> ml_collections.ConfigDict:
    """The device mesh every config starts from (`lla.training.sharding`): all devices on
    "data", no parameter or token sharding; `--config.mesh.fsdp=4` (or
    `experiments.train --mesh=`) shards parameters and optimizer state over groups of 4
    devices, `--config.mesh.sequence=4` each image's tokens (models with a
    `sequence_axis`, the DiT; `docs/sequence_parallel.md`)."""
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "sequence": 1})
