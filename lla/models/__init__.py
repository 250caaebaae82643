"""Model families by name: each is a module `lla.models.<family>` that exports `Model` (a
linen module class) and `PRESETS` (named size presets, dicts of `Model` fields).

    lla.models.names()          # ('convssm', 'dit', 'lm', 'video_transformer', 'vit')
    family = lla.models.get("dit")                       # the module
    model = lla.models.build("dit", preset="S", resolution=256, attention="llsa")
    from lla.models import DiT                           # the classes, directly

The training loop builds models through `build` from `config.model`; it never imports a
family module itself. A new family is a new module here: nothing else to edit. What the loop
asks of a `Model` besides being a linen module: a `tokens_per_example` property (throughput
metrics); the objective it is trained with names the rest (e.g. flow matching calls
`apply(params, images, timesteps, labels, train=..., rngs=...)` and reads the fields
`resolution`, `channels`, `num_classes`, which it also fills from the data).
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import flax.linen as nn


def names() -> tuple[str, ...]:
    """The model families: modules of this package that export `Model` and `PRESETS`."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "Model") and hasattr(module, "PRESETS"):
            found.append(info.name)
    return tuple(sorted(found))


def get(name: str) -> types.ModuleType:
    """The family module `name`; the error lists the families there are."""
    if name not in names():
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def build(name: str, preset: str | None = None, **fields) -> nn.Module:
    """`Model(**PRESETS[preset], **fields)` of family `name` (fields override the preset).

    Raises:
      ValueError: an unknown family or preset (naming the known ones).
    """
    family = get(name)
    if preset is not None and preset not in family.PRESETS:
        raise ValueError(f"{name}: unknown preset {preset!r}; presets: "
                         f"{', '.join(family.PRESETS)}")
    return family.Model(**{**(family.PRESETS[preset] if preset else {}), **fields})


from lla.models.convssm import ConvSSM  # noqa: E402 - the classes, after the lookup functions
from lla.models.dit import DiT  # noqa: E402
from lla.models.lm import LM  # noqa: E402
from lla.models.video_transformer import VideoTransformer  # noqa: E402
from lla.models.vit import ViT  # noqa: E402

__all__ = ["LM", "ConvSSM", "DiT", "ViT", "VideoTransformer", "build", "get", "names"]
