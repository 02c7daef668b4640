"""Data: the shipped corpus, deterministic splits, the tokenizer and token streams for training."""

from explorer.data.corpus import SPLITS, TEST_WORKS, VAL_WORKS, load_corpus, shakespeare, split_works
from explorer.data.stream import TokenStream
from explorer.data.tokenizer import BOS, EOS, MASK, PAD, SPECIAL_TOKENS, load_tokenizer, train_tokenizer

__all__ = [
    "SPLITS", "TEST_WORKS", "VAL_WORKS", "load_corpus", "shakespeare", "split_works",
    "BOS", "EOS", "MASK", "PAD", "SPECIAL_TOKENS", "load_tokenizer", "train_tokenizer", "TokenStream",
]
