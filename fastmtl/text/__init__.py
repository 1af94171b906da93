"""Text building blocks: a WordPiece tokenizer and the pretrained MiniLM sentence encoder."""

from fastmtl.text.minilm import MiniLM, MiniLMEncoder, load_minilm, minilm_dir
from fastmtl.text.wordpiece import WordPiece

__all__ = ["MiniLM", "MiniLMEncoder", "WordPiece", "load_minilm", "minilm_dir"]
