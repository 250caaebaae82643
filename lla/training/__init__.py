"""Train state, step builders, sharding, Orbax checkpointing, EMA, metric writers."""
