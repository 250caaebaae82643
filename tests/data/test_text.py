"""Byte corpora and next-token batches: packing and Dataset Decomposition."""

import itertools

import numpy as np
import pytest

from lla.data import batches, corpora, get_source, text


def random_documents(count=40, seed=0, low=1, high=700):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, int(rng.integers(low, high)), dtype=np.uint8).tobytes()
            for _ in range(count)]


def test_decompose_is_binary_from_the_front():
    assert text.decompose(1300, 8, 10) == [1024, 256, 20]
    assert text.decompose(5000, 6, 10) == [1024] * 4 + [512, 256, 128, 8]
    assert text.decompose(63, 6, 10) == [63]
    for length in range(1, 3000, 37):
        chunks = text.decompose(length, 4, 9)
        assert sum(chunks) == length
        assert all(c & (c - 1) == 0 for c in chunks[:-1] if c >= 16)
        assert all(c >= 16 for c in chunks[:-1]), chunks  # only the last may be short


def epoch_spans(source, batch_size, seed=0, epoch=0):
    return [span for _, spans in source.epoch_schedule(batch_size, seed, epoch)
            for span in spans if span[1]]


def test_decomposition_reads_every_byte_once_and_never_mixes_documents():
    documents = random_documents()
    source = text.TokenSource(documents, 256, decomposition=(4, 8))
    spans = sorted(epoch_spans(source, batch_size=2))
    covered = np.zeros(source.num_tokens, int)
    for start, count in spans:
        covered[start:start + count] += 1
        document = source.document[start]
        assert source.document[start + count - 1] == document  # inside one document
    np.testing.assert_array_equal(covered, 1)
    assert len(spans) == source.num_examples


def test_decomposition_steps_hold_constant_token_slots_and_all_targets():
    documents = random_documents()
    source = text.TokenSource(documents, 256, decomposition=(4, 8))
    steps = len(source.epoch_schedule(3, 0, 0))
    stream = batches(source, batch_size=3, seed=0)
    weight, shapes = 0.0, set()
    for batch in itertools.islice(stream, steps):
        rows, length = batch["tokens"].shape
        assert rows * length == 3 * 256
        shapes.add(length)
        weight += batch["weights"].sum()
        assert "segment_ids" not in batch  # one document per row: causal needs no mask
    assert shapes == {16, 32, 64, 128, 256}
    assert weight == source.num_tokens - len(documents)  # every byte but each first


def test_rows_hold_the_bytes_and_their_successors():
    documents = [b"abcdef", b"XYZ"]
    source = text.TokenSource(documents, 4)
    batch = source.rows([(3, 4), (7, 2)], 4)
    assert bytes(batch["tokens"][0].astype(np.uint8)) == b"defX"
    assert bytes(batch["targets"][0, :2].astype(np.uint8)) == b"ef"
    np.testing.assert_array_equal(batch["weights"][0], [1, 1, 0, 1])  # f -> X crosses
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 2])
    np.testing.assert_array_equal(batch["weights"][1], [1, 0, 0, 0])  # Z is the last byte
    np.testing.assert_array_equal(batch["segment_ids"][1], [1, 1, 0, 0])


def test_packed_windows_cover_the_stream():
    documents = random_documents(count=12)
    source = text.TokenSource(documents, 64)
    stream = np.frombuffer(b"".join(documents), np.uint8)
    batch = source.windows(range(source.num_examples))
    flat = batch["tokens"].reshape(-1)[:source.num_tokens - 1]
    np.testing.assert_array_equal(flat, stream[:-1])
    targets = batch["targets"].reshape(-1)[:source.num_tokens - 1]
    weights = batch["weights"].reshape(-1)[:source.num_tokens - 1] > 0
    np.testing.assert_array_equal(targets[weights], stream[1:][weights])
    assert weights.sum() == source.num_tokens - len(documents)


def test_packed_rows_carry_segment_ids_unless_masking_is_off():
    documents = random_documents(count=12)
    masked = next(batches(text.TokenSource(documents, 64), batch_size=2, seed=0))
    unmasked = next(batches(text.TokenSource(documents, 64, document_masking=False),
                            batch_size=2, seed=0))
    assert masked["segment_ids"].max() >= 1 and "segment_ids" not in unmasked
    for key in unmasked:
        np.testing.assert_array_equal(unmasked[key], masked[key])


def test_curriculum_grows_within_each_cycle():
    source = text.TokenSource(random_documents(count=300, high=2000), 256,
                              decomposition=(4, 8), cycles=4)
    schedule = [bucket for bucket, _ in source.epoch_schedule(1, 0, 0)]
    cycles = np.array_split(np.asarray(schedule), 4)
    for cycle in cycles:
        quarter = len(cycle) // 4
        assert cycle[:quarter].mean() < cycle[-quarter:].mean()


@pytest.mark.parametrize("decomposition", [None, (4, 7)])
def test_resume_and_process_shares_match_the_global_stream(decomposition):
    source = text.TokenSource(random_documents(count=15), 128, decomposition=decomposition)
    steps = 3 * (len(source.epoch_schedule(4, 1, 0)) if decomposition else 10)
    whole = list(itertools.islice(batches(source, batch_size=4, seed=1), steps))
    resumed = next(batches(source, batch_size=4, seed=1, start_step=steps - 1))
    for key in whole[-1]:
        np.testing.assert_array_equal(resumed[key], whole[-1][key])
    shares = [next(batches(source, batch_size=4, seed=1, start_step=steps - 2,
                           process_index=p, process_count=2)) for p in range(2)]
    for key in whole[-2]:
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[-2][key])


def test_bad_arguments_say_what_would_work():
    with pytest.raises(ValueError, match="sequence_length == 2"):
        text.TokenSource([b"abc"], 100, decomposition=(2, 6))
    with pytest.raises(ValueError, match="non-empty sequence of bytes"):
        text.TokenSource([], 8)
    with pytest.raises(ValueError, match="unknown split"):
        get_source("procedural_text", split="test")
    with pytest.raises(FileNotFoundError, match=r"fetch_shakespeare\.sh"):
        get_source("shakespeare", directory="/nonexistent")


def test_procedural_corpus_is_deterministic_and_splits_are_disjoint():
    train = corpora.procedural_plays(num_documents=20)
    assert train == corpora.procedural_plays(num_documents=20)
    validation = corpora.procedural_plays("validation", num_documents=20)
    assert len(validation) == 2 and not set(validation) & set(train)
    assert corpora.procedural_plays(num_documents=20, seed=1) != train
    assert train[0].startswith(b"SCENE 0. Enter ")


def test_markdown_to_text_and_shakespeare_splits(tmp_path):
    play = ("# A Play\n\n## ACT I\n\n### SCENE I. A hall.\n\n_Enter HAMLET_\n\n"
            "**HAMLET**  \nTo be, or not to be:  \nthat is the _question_.\n")
    assert corpora.markdown_to_text(play) == (
        "A Play\n\nACT I\n\nSCENE I. A hall.\n\nEnter HAMLET\n\nHAMLET:\nTo be, or not to "
        "be:\nthat is the question.\n")
    for number in range(12):
        (tmp_path / "kind").mkdir(exist_ok=True)
        (tmp_path / "kind" / f"play{number:02d}.md").write_text(f"**P{number}**  \nline\n")
    train = corpora.shakespeare(tmp_path)
    validation = corpora.shakespeare(tmp_path, "validation")
    assert [doc.split(b":")[0] for doc in validation] == [b"P0", b"P10"]
    assert len(train) == 10 and not set(train) & set(validation)
