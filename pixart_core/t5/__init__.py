"""T5 text encoder (T5-v1.1-XXL for PixArt) and its tokenizer, in plain PyTorch."""

from .config import T5_V1_1_XXL, T5Config
from .load import load_t5_encoder
from .model import T5Encoder
from .tokenizer import T5Tokenizer, load_t5_tokenizer

__all__ = ["T5Config", "T5_V1_1_XXL", "T5Encoder", "T5Tokenizer", "load_t5_encoder", "load_t5_tokenizer"]
