"""Pieces shared by the attention ops: input validation, merging of partial results, the
chunked online-softmax reference, and token orders (how a model feeds grid tokens to an op)."""
