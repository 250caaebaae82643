"""Byte-level token batches for language models: packed windows, or Dataset Decomposition.

`TokenSource(documents, sequence_length, decomposition=None)` turns a corpus (documents of
bytes, `lla.data.corpora`) into next-token batches; `lla.data.batches` asks it for them, so
resuming, seeds and multi-host shares work as for images (`lla.data.base`). Every batch is

    {"tokens":      int32 [b, n]   input bytes,
     "targets":     int32 [b, n]   the byte after each input byte (same document),
     "segment_ids": int32 [b, n]   1, 2, ... per document within a row; 0 = padding
                                   (packed rows only, see below),
     "weights":     float32 [b, n] 1 where the target counts, 0 at padding and where the
                                   next byte belongs to another document}

Rows of Dataset Decomposition hold one document each, followed by padding; they carry no
segment ids: under causal attention no real token sees the padding, so no mask is needed
(and attention implementations without segment support, such as cuDNN's, can run). Packed
rows carry them unless `document_masking=False` (documents of a row then see each other, as
in GPT-2-style concat-and-chunk training).

Packing (default, "concat-and-chunk"): the documents, concatenated in corpus order, are cut
into windows of `n = sequence_length` input bytes; window w reads bytes [w·n, w·n + n] (the
last one padded). A row can hold the end of one document and the start of the next: their
segment ids differ, so a model attends only within a document and restarts positions.
Windows are examples of the usual epoch permutation (`batch_indices`).

Dataset Decomposition (arXiv 2405.13226; `decomposition=(lo, hi)`): each document of length
l is cut, front to back, into chunks of 2^hi bytes while at least 2^hi remain, then one chunk
per set bit of the remainder from 2^(hi-1) down to 2^lo; a final remainder shorter than 2^lo
is one padded chunk of the 2^lo bucket. Chunk i of length 2^k goes to bucket k; nothing mixes
documents, so no row needs a mask. A step draws one bucket: `b_k = batch_size · 2^(hi-k)`
rows of 2^k bytes, so every step holds `batch_size · 2^hi` token slots (the sequence_length is
2^hi) and short buckets cost less attention. Each input byte of the corpus is read exactly
once per epoch; every byte but a document's first is a target exactly once.

Curriculum (the paper's "Grow-P2"): an epoch is the batches of every bucket (each bucket's
chunks shuffled, the last batch padded with empty rows), split evenly into `cycles` cycles.
Within a cycle, each next batch comes from bucket k with probability proportional to
`2^(hi-k) · remaining_k` (remaining_k: bucket k's batches still unused in this cycle), so each
cycle starts with short sequences and grows towards long ones. The schedule is a pure
function of (seed, epoch).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from lla.data import corpora
from lla.data.base import batch_indices

VOCAB_SIZE = 256  # bytes


def decompose(length: int, lo: int, hi: int) -> list[int]:
    """The chunk lengths of a document of `length` bytes, front to back (module docstring):
    e.g. decompose(1300, 8, 10) == [1024, 256, 20]."""
    chunks = [2 ** hi] * (length // 2 ** hi)
    rest = length % 2 ** hi
    for k in range(hi - 1, lo - 1, -1):
        if rest >= 2 ** k:
            chunks.append(2 ** k)
            rest -= 2 ** k
    return chunks + ([rest] if rest else [])


class TokenSource:
    """Next-token batches of a byte corpus (module docstring).

    Attributes:
      vocab_size: 256, or more when asked (a model with a larger vocabulary, e.g. GPT-2's
        50,304 for a benchmark, trained on bytes).
      sequence_length: n, the longest row (2^hi with decomposition).
      num_examples: windows per epoch (packing) or chunks (decomposition).
      num_tokens: bytes in the corpus.
    """

    def __init__(self, documents: Sequence[bytes], sequence_length: int, *,
                 decomposition: tuple[int, int] | None = None, cycles: int = 8,
                 vocab_size: int = VOCAB_SIZE, document_masking: bool = True):
        if not documents or not all(isinstance(d, bytes | bytearray) for d in documents):
            raise ValueError("documents must be a non-empty sequence of bytes")
        if not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(f"sequence_length must be a positive int; got {sequence_length!r}")
        if not isinstance(vocab_size, int) or vocab_size < VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an int >= {VOCAB_SIZE} (bytes); got "
                             f"{vocab_size!r}")
        self.vocab_size = vocab_size
        self.document_masking = bool(document_masking)
        lengths = np.asarray([len(d) for d in documents], np.int64)
        if lengths.min() < 1:
            raise ValueError("every document needs at least one byte")
        self.stream = np.frombuffer(b"".join(documents), np.uint8)
        # document d holds bytes [starts[d], starts[d + 1]) of the stream
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.document = np.repeat(np.arange(len(documents), dtype=np.int32), lengths)
        self.num_tokens = int(lengths.sum())
        self.sequence_length = sequence_length
        self.decomposition = None
        if decomposition is None:
            self.row_segments = self.document_masking
            self.num_examples = -(-(self.num_tokens - 1) // sequence_length) or 1
            return
        lo, hi = (int(x) for x in decomposition)
        if not 0 <= lo <= hi or 2 ** hi != sequence_length:
            raise ValueError(f"decomposition=(lo, hi) needs 0 <= lo <= hi and sequence_length "
                             f"== 2^hi; got {decomposition} with sequence_length "
                             f"{sequence_length} (use sequence_length={2 ** max(hi, 0)})")
        if not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles must be a positive int; got {cycles!r}")
        self.decomposition, self.cycles = (lo, hi), cycles
        self.row_segments = False  # one document per row
        self.buckets: dict[int, list[tuple[int, int]]] = {k: [] for k in range(lo, hi + 1)}
        for start, length in zip(self.starts[:-1].tolist(), lengths.tolist(), strict=True):
            for chunk in decompose(length, lo, hi):
                self.buckets[max(lo, chunk.bit_length() - 1)].append((start, chunk))
                start += chunk
        self.num_examples = sum(len(chunks) for chunks in self.buckets.values())

    # --- rows -----------------------------------------------------------------------------

    def rows(self, spans: Sequence[tuple[int, int]], length: int, *,
             segments: bool = True) -> dict[str, np.ndarray]:
        """A batch of `len(spans)` rows of `length` slots; span (start, count) reads input
        bytes [start, start + count) of the concatenated corpus (count <= length; the rest is
        padding), each with the byte after it as target where that is in the same document.
        Without `segments` the batch has no "segment_ids"."""
        spans = np.asarray(spans, np.int64).reshape(-1, 2)
        offsets = np.arange(length)
        inside = offsets < spans[:, 1:]  # [rows, length]: a real input byte, not padding
        inputs = np.where(inside, spans[:, :1] + offsets, 0)
        following = np.minimum(inputs + 1, self.num_tokens - 1)
        document = self.document[inputs]
        same = inside & (inputs + 1 < self.num_tokens) & (self.document[following] == document)
        batch = {"tokens": np.where(inside, self.stream[inputs], 0).astype(np.int32),
                 "targets": np.where(same, self.stream[following], 0).astype(np.int32),
                 "segment_ids": np.where(inside, document - document[:, :1] + 1,
                                         0).astype(np.int32),
                 "weights": same.astype(np.float32)}
        if not segments:
            del batch["segment_ids"]
        return batch

    def windows(self, indices: Sequence[int], *, segments: bool = True) -> dict[str, np.ndarray]:
        """The packed windows `indices` (packing layout; with segment ids unless told not
        to), e.g. for a validation pass."""
        n = self.sequence_length
        return self.rows([(w * n, min(n, self.num_tokens - w * n)) for w in indices], n,
                         segments=segments)

    # --- Dataset Decomposition schedule ---------------------------------------------------

    def batch_rows(self, bucket: int) -> int:
        """Rows per step of `bucket` (per `batch_size` = 1): 2^(hi - bucket)."""
        return 2 ** (self.decomposition[1] - bucket)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one source per run; the cache is per epoch
    def epoch_schedule(self, batch_size: int, seed: int,
                       epoch: int) -> tuple[tuple[int, tuple[tuple[int, int], ...]], ...]:
        """The steps of one epoch: (bucket, spans of its global batch), curriculum order."""
        rng = np.random.default_rng([seed, epoch])
        batches: dict[int, list[tuple[tuple[int, int], ...]]] = {}
        for bucket, chunks in self.buckets.items():
            rows = batch_size * self.batch_rows(bucket)
            order = [chunks[i] for i in rng.permutation(len(chunks))]
            order += [(0, 0)] * (-len(order) % rows)
            batches[bucket] = [tuple(order[i:i + rows]) for i in range(0, len(order), rows)]
        parts = {k: np.array_split(np.arange(len(b)), self.cycles) for k, b in batches.items()}
        schedule = []
        for cycle in range(self.cycles):
            queues = {k: [batches[k][i] for i in parts[k][cycle]] for k in batches}
            while any(queues.values()):
                keys = [k for k in queues if queues[k]]
                odds = np.asarray([self.batch_rows(k) * len(queues[k]) for k in keys], float)
                bucket = keys[int(rng.choice(len(keys), p=odds / odds.sum()))]
                schedule.append((bucket, queues[bucket].pop(0)))
        return tuple(schedule)

    # --- the batches `lla.data.batches` asks for -------------------------------------------

    def batches(self, *, batch_size: int, seed: int, start_step: int, process_index: int,
                process_count: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's share of global steps `start_step, ...` (arguments checked by
        `lla.data.batches`): rows [k·b/n, (k+1)·b/n) of each global batch of b rows."""
        if self.decomposition is None:
            for step in itertools.count(start_step):
                yield self.windows(batch_indices(
                    self.num_examples, batch_size=batch_size, seed=seed, step=step,
                    process_index=process_index, process_count=process_count),
                    segments=self.row_segments)
            return
        steps_per_epoch = len(self.epoch_schedule(batch_size, seed, 0))
        for step in itertools.count(start_step):
            epoch, position = divmod(step, steps_per_epoch)
            bucket, spans = self.epoch_schedule(batch_size, seed, epoch)[position]
            local = len(spans) // process_count
            yield self.rows(spans[process_index * local:(process_index + 1) * local],
                            2 ** bucket, segments=False)


def procedural_text(split: str = "train", *, sequence_length: int = 256,
                    decomposition: Sequence[int] | None = None, cycles: int = 8,
                    num_documents: int = 400, seed: int = 0,
                    vocab_size: int = VOCAB_SIZE, document_masking: bool = True) -> TokenSource:
    """The embedded corpus (`corpora.procedural_plays`: 400 scenes, 1.8 MB) as tokens."""
    return TokenSource(corpora.procedural_plays(split, num_documents=num_documents, seed=seed),
                       sequence_length, cycles=cycles, vocab_size=vocab_size,
                       document_masking=document_masking,
                       decomposition=tuple(decomposition) if decomposition else None)


def shakespeare_text(directory: str = "data/shakespeare", split: str = "train", *,
                     sequence_length: int = 1024, decomposition: Sequence[int] | None = None,
                     cycles: int = 8, document_masking: bool = True) -> TokenSource:
    """Shakespeare's plays (`corpora.shakespeare`: 34 train, 4 validation) as tokens."""
    return TokenSource(corpora.shakespeare(directory, split), sequence_length, cycles=cycles,
                       document_masking=document_masking,
                       decomposition=tuple(decomposition) if decomposition else None)
