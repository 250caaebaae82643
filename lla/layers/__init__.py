"""Linen modules built on `lla.attention`: the attention layer, MLP, adaLN, embeddings."""
