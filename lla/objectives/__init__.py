"""Training objectives by name: each is a module `lla.objectives.<name>` exporting `Objective`,
a frozen dataclass built from `config.objective` (its fields are the config's keys).

    lla.objectives.names()                                   # ('flow_matching',)
    objective = lla.objectives.build("flow_matching", noise_scale=0.0)

What the generic training loop asks of an objective (`lla.objectives.base.Objective`): the
data-dependent fields of the model it trains, initial parameters, the loss of one batch, and
an optional periodic evaluation (metrics and images). A new objective is a new module here.
Modules without an `Objective` hold shared pieces: `base` (that interface) and `alignment`
(SSA's alignment of sparse with dense attention, which flow matching and next token take).
"""

from __future__ import annotations

import importlib
import pkgutil

from lla.objectives.base import Evaluation, Objective


def names() -> tuple[str, ...]:
    """The objectives: modules of this package that export `Objective`."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and hasattr(
                importlib.import_module(f"{__name__}.{info.name}"), "Objective"):
            found.append(info.name)
    return tuple(sorted(found))


def build(name: str, **fields) -> Objective:
    """`Objective(**fields)` of the objective module `name`.

    Raises:
      ValueError: an unknown objective (naming the known ones) or field.
    """
    if name not in names():
        raise ValueError(f"unknown objective {name!r}; objectives: {', '.join(names())}")
    cls = importlib.import_module(f"{__name__}.{name}").Objective
    try:
        return cls(**fields)
    except TypeError as error:
        raise ValueError(f"objective {name!r}: {error}") from None


__all__ = ["Evaluation", "Objective", "build", "names"]
