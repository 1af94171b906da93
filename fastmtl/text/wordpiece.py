"""BERT's uncased WordPiece tokenizer in plain Python, so the pretrained MiniLM runs without
transformers or tokenizers installed.

The rules are BERT's (``BertNormalizer`` with lowercase, ``BertPreTokenizer``, ``WordPiece``):
control characters dropped and whitespace unified; CJK ideographs split off; lowercase and accents
stripped (NFD without combining marks); split on whitespace and on every punctuation character;
each word greedily split into the longest vocabulary pieces, later pieces prefixed ``##``, a word
that cannot be split (or is over 100 characters) becoming ``[UNK]``. The tests compare the ids
with Hugging Face ``tokenizers`` on the model's own ``tokenizer.json``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

import torch

_MAX_WORD_CHARS = 100
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)  # BERT counts every non-alphanumeric ASCII symbol as punctuation
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co", "Cs")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def normalize(text: str) -> str:
    """Cleaned, CJK-spaced, lowercased text without accents."""
    out = []
    for ch in text:
        if ch in ("\0", "\ufffd") or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def pre_tokenize(text: str) -> list:
    """Words: whitespace-separated runs, each punctuation character a word of its own."""
    words = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if _is_punctuation(ch):
                words += [word, ch] if word else [ch]
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


class WordPiece:
    """``WordPiece(vocab_file)``; ``encode(texts, max_length)`` gives padded ids and a mask."""

    def __init__(self, vocab_file: str | Path) -> None:
        tokens = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.unk, self.cls, self.sep, self.pad = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))

    def word_ids(self, word: str) -> list:
        """The longest-match pieces of one word, or ``[UNK]``."""
        if len(word) > _MAX_WORD_CHARS:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def ids(self, text: str) -> list:
        """The ids of one text without the special tokens."""
        return [i for word in pre_tokenize(normalize(text)) for i in self.word_ids(word)]

    def encode(self, texts: Iterable[str], max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] ids [SEP]`` per text, truncated to ``max_length`` and right-padded to the
        longest: ids ``[N, L]`` int64 and the attention mask ``[N, L]`` bool."""
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        rows = [[self.cls] + self.ids(t)[: max_length - 2] + [self.sep] for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask
