r"""Continues a prompt with a trained byte-level language model (KV-cache decoding, EMA weights
by default): prints the prompt and its continuation and writes them to
`<workdir>/generated/<UTC time>.txt`.

    python -m experiments.generate --workdir=workdirs/lm [--prompt="ROMILDA:"] [--steps=200] \
        [--temperature=1.0] [--top_k=0] [--top_p=1.0] [--seed=0] [--ema=true] [--step=N]

The prompt is encoded as UTF-8 bytes (token = byte value, vocabulary 256); the output bytes
are decoded with errors="replace". Prompt plus steps must fit the model's context.
"""

from __future__ import annotations

import datetime
import pathlib
import sys

import jax
import numpy as np
from absl import app, flags, logging

from experiments.checkpoints import restore
from lla.models.lm_decoding import generate

flags.DEFINE_string("workdir", None, "a language model's training workdir")
flags.DEFINE_string("prompt", "\n", "the text to continue (UTF-8, at least one byte)")
flags.DEFINE_integer("steps", 200, "new bytes")
flags.DEFINE_float("temperature", 1.0, "softmax temperature; 0 = greedy")
flags.DEFINE_integer("top_k", 0, "sample among the k most likely bytes (0: all)")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling: the smallest set with this mass (1: all)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_bool("ema", True, "use the EMA weights (else the raw ones)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def encode(text: str, vocab_size: int) -> np.ndarray:
    """int32 [1, P]: the UTF-8 bytes of `text`; SystemExit when empty or outside the vocab."""
    tokens = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)[None]
    if tokens.size == 0:
        raise SystemExit("--prompt is empty; give at least one byte (e.g. --prompt=$'\\n')")
    if tokens.max() >= vocab_size:
        raise SystemExit(f"the prompt has byte {tokens.max()}, outside the model's vocabulary "
                         f"of {vocab_size}; use ASCII text")
    return tokens


def decode(tokens: np.ndarray) -> str:
    """The bytes of int tokens [P] as text (undecodable bytes become U+FFFD)."""
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(FLAGS.workdir)

    def is_language_model(experiment):
        if not hasattr(experiment.model, "decode"):
            raise SystemExit(f"the model of {workdir} ({type(experiment.model).__name__}) "
                             f"is not a language model with KV-cache decoding")

    experiment, state, _ = restore(workdir, FLAGS.step, check=is_language_model)
    model = experiment.model
    prompt = encode(FLAGS.prompt, model.vocab_size)
    try:
        tokens = generate(model, state.ema_params if FLAGS.ema else state.params, prompt,
                          jax.random.key(FLAGS.seed), steps=FLAGS.steps,
                          temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    text = decode(jax.device_get(tokens)[0])
    time = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S_%f")
    out = workdir / "generated" / f"{time}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
