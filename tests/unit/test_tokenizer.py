"""SentencePiece tokenizer: training, eos-terminated fixed-length encoding, decoding, bad files."""

from __future__ import annotations

import pytest
import torch

from harness.data.tokenizer import Tokenizer, train_tokenizer

WORDS = ["dodo", "hot", "beverage", "bus", "stop", "woman", "mountain", "biking", "map", "of", "Japan",
         "studio", "microphone", "face", "in", "clouds", "flag", "Bulgaria", "café", "東京", "🦤"]
CAPTIONS = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 2 + i % 5)) for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(CAPTIONS, path, vocab_size=200)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.model"]  # written atomically, no temporary left
    return Tokenizer(path)


def test_special_ids(tokenizer):
    assert tokenizer.pad_id == 0 and tokenizer.eos_id == 2
    assert 20 < tokenizer.vocab_size <= 200  # hard_vocab_limit=False: a small corpus may give fewer pieces


def test_round_trip(tokenizer):
    captions = ["a dodo in clouds", "café 東京 🦤", "flag of Bulgaria", ""]
    ids, lengths = tokenizer.encode(captions, max_len=32)
    assert ids.shape == (4, 32) and ids.dtype == torch.int64 and lengths.dtype == torch.int64
    for row, n in zip(ids, lengths):
        assert row[n - 1] == tokenizer.eos_id and (row[n:] == tokenizer.pad_id).all()
        assert (row[:n - 1] != tokenizer.eos_id).all() and (row[:n] != tokenizer.pad_id).all()
    assert lengths[3] == 1  # an empty (dropped) caption is just eos
    assert tokenizer.decode(ids) == captions
    assert tokenizer.decode([row[:n].tolist() for row, n in zip(ids, lengths)]) == captions


def test_truncation_keeps_eos_last(tokenizer):
    long = " ".join(WORDS * 3)
    full, full_len = tokenizer.encode([long], max_len=512)
    ids, lengths = tokenizer.encode([long, "dodo"], max_len=5)
    assert lengths.tolist()[0] == 5 and full_len[0] > 5
    assert ids[0].tolist() == full[0, :4].tolist() + [tokenizer.eos_id]
    assert long.startswith(tokenizer.decode(ids[:1])[0])
    one, one_len = tokenizer.encode([long], max_len=1)
    assert one.tolist() == [[tokenizer.eos_id]] and one_len.tolist() == [1]
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        tokenizer.encode(["dodo"], max_len=0)


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope.model'}: no tokenizer model"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=f"{bad}: not a SentencePiece model"):
        Tokenizer(bad)
