"""Data: tokenizers, streamed text sources (text, JSONL, Parquet, saved datasets, folders), packing, and the
language-modelling stream (held-out prefix, deterministic epochs, replay to a position)."""

import itertools
import json

import numpy as np
import pytest
import torch

from nestedmemory.data import (
    ByteTokenizer,
    FileTokenizer,
    TextData,
    batched,
    documents,
    load_tokenizer,
    pack,
    shuffled,
    skip_tokens,
    take_tokens,
    token_chunks,
)


def texts(path, field="text") -> list[str]:
    return ["".join(document) for document in documents(path, field)]


def test_byte_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("Ünïcode — ok")
    assert ids.dtype == np.int64 and ids.max() < tokenizer.vocab_size == 256
    assert tokenizer.decode(ids) == "Ünïcode — ok"
    assert tokenizer.decode([0xFF]) == "\ufffd"


@pytest.fixture
def bpe_file(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tokenizer.train_from_iterator(["to be or not to be, that is the question"] * 50, trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_bpe_tokenizer_from_file(bpe_file, tmp_path):
    tokenizer = load_tokenizer(bpe_file)
    assert isinstance(tokenizer, FileTokenizer) and tokenizer.vocab_size <= 300
    ids = tokenizer.encode("to be or not to be")
    assert len(ids) < len("to be or not to be") and tokenizer.decode(ids) == "to be or not to be"
    assert len(tokenizer.encode("<|endoftext|>")) == 1
    saved = tmp_path / "model"
    saved.mkdir()
    tokenizer.save(saved)
    assert load_tokenizer(saved).encode("to be").tolist() == tokenizer.encode("to be").tolist()


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)  # a folder without tokenizer.json: bytes


def test_text_jsonl_parquet_and_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("nestedmemory.data.files.PIECE_CHARS", 5)
    (tmp_path / "a.txt").write_text("line one\nline two\nline three\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    pieces = list(next(documents(tmp_path / "a.txt")))
    assert len(pieces) == 3 and "".join(pieces) == "line one\nline two\nline three\n"  # streamed by lines
    assert texts(tmp_path / "b.jsonl") == ["first", "second"]
    assert texts(tmp_path) == ["line one\nline two\nline three\n", "first", "second"]  # a folder, in name order
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x", "y", None]}), tmp_path / "c.parquet")
    assert texts(tmp_path / "c.parquet", "body") == ["x", "y", ""]
    with pytest.raises(ValueError, match="no column 'text'"):
        texts(tmp_path / "c.parquet")


def test_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["alpha", "beta"]}).save_to_disk(tmp_path / "single")
    assert texts(tmp_path / "single") == ["alpha", "beta"]
    splits = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["gamma"]}),
                                  test=datasets.Dataset.from_dict({"text": ["delta"]}))
    splits.save_to_disk(tmp_path / "splits")
    assert texts(tmp_path / "splits") == ["gamma"]


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        documents(tmp_path / "missing.txt")  # raised at once, not when first read
    with pytest.raises(FileNotFoundError, match="no data files"):
        documents(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        texts(tmp_path / "bad.jsonl")
    (tmp_path / "field.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="field.jsonl:1 has no text field 'text'"):
        texts(tmp_path / "field.jsonl")


def test_packing_pipeline():
    chunks = [np.arange(0, 5), np.arange(5, 7), np.arange(7, 12)]
    assert [b.tolist() for b in pack(chunks, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [b.tolist() for b in pack(chunks, 5, drop_last=False)][-1] == [10, 11]
    assert np.concatenate(list(take_tokens(chunks, 6))).tolist() == list(range(6))
    assert np.concatenate(list(skip_tokens(chunks, 6))).tolist() == list(range(6, 12))
    tokenizer = ByteTokenizer()
    stream = np.concatenate(list(token_chunks([["ab", "c"], ["d"]], tokenizer, separator="|")))
    assert tokenizer.decode(stream) == "abc|d|"
    blocks = list(pack(chunks, 5, drop_last=False))
    shapes = [tuple(b.shape) for b in batched(blocks, 2, drop_last=False)]
    assert shapes == [(2, 5), (1, 2)]
    assert [tuple(b.shape) for b in batched(blocks, 2)] == [(2, 5)]
    items = list(shuffled(range(100), 10, np.random.default_rng(0)))
    assert sorted(items) == list(range(100)) and items != list(range(100))
    assert items == list(shuffled(range(100), 10, np.random.default_rng(0)))


def test_text_data_split_epochs_and_replay(tmp_path):
    text = "".join(np.random.default_rng(0).choice(list("abcdefghij"), 2000))
    (tmp_path / "t.txt").write_text(text)
    data = TextData(str(tmp_path / "t.txt"), ByteTokenizer(), seq_len=16, val_tokens=200, shuffle_buffer=8)
    validation = data.validation_batches(4)
    assert len(validation) == 3 and validation[0].shape == (4, 16)  # 12 full blocks of the 200 held-out tokens
    assert data.validation_tokens().tolist() == list(text[:200].encode())
    stream = list(itertools.islice(data.training_batches(4, seed=1), 80))  # several epochs of ~28 batches
    held_out = {tuple(row.tolist()) for batch in validation for row in batch}
    assert not held_out & {tuple(row.tolist()) for batch in stream[:28] for row in batch}
    assert all(batch.dtype == torch.int64 and batch.shape == (4, 16) for batch in stream)
    resumed = list(itertools.islice(data.training_batches(4, seed=1, start=50), 30))
    assert all(torch.equal(a, b) for a, b in zip(stream[50:], resumed))
    other = list(itertools.islice(data.training_batches(4, seed=2), 5))
    assert not all(torch.equal(a, b) for a, b in zip(stream, other))
    with pytest.raises(ValueError, match=r"t.txt has 2002 tokens \(with separators\); it needs val_tokens"):
        TextData(str(tmp_path / "t.txt"), ByteTokenizer(), 16, val_tokens=1990)
    with pytest.raises(FileNotFoundError):
        TextData(str(tmp_path / "missing.txt"), ByteTokenizer(), 16, val_tokens=0)


def test_bpe_tokenizer_through_training_and_sampling(bpe_file, tmp_path):
    from nestedmemory.train import DataConfig, ModelConfig, SampleConfig, TrainConfig, train
    from nestedmemory.train.inference import load

    (tmp_path / "corpus.jsonl").write_text((json.dumps({"text": "to be or not to be"}) + "\n") * 200)
    out = tmp_path / "run"
    data = DataConfig(path=str(tmp_path / "corpus.jsonl"), tokenizer=str(bpe_file), separator="<|endoftext|>",
                      seq_len=16, val_tokens=128)
    summary = train(TrainConfig(model=ModelConfig(size="tiny"), data=data, out=str(out), max_steps=2, batch_size=4,
                                sample=SampleConfig(prompt="to", max_new_tokens=3), eval_every=0, save_every=0,
                                progress=False))
    model, tokenizer, folder = load(out)
    assert isinstance(tokenizer, FileTokenizer) and (folder / "tokenizer.json").is_file()
    assert model.config.vocab_size == load_tokenizer(bpe_file).vocab_size and summary["sample"]
