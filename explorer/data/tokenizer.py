"""Byte-level BPE tokenizer (2,048 entries) trained on the train split, shared by every family."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, MASK = "<pad>", "<bos>", "<eos>", "[MASK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, MASK)  # ids 0..3 in this order
VOCAB_SIZE = 2048
TOKENIZER = "tokenizer.json"
SHIPPED_TOKENIZER = Path(__file__).resolve().parent / TOKENIZER  # the one every shipped checkpoint uses


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train byte-level BPE; byte-level pre-tokenisation makes encode -> decode lossless."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer):
    """Wrap as a `transformers.PreTrainedTokenizerFast` with the special tokens named."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, mask_token=MASK
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load `tokenizer.json` (a file or the folder holding it); a malformed file is a ValueError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 (tokenizers raises a bare Exception for every malformed file)
        raise ValueError(f"{path}: not a valid tokenizer file ({err})") from None


def display_string(tokenizer: Tokenizer, token_id: int) -> str:
    """How one token reads on its own (special tokens by name, spaces and newlines visible)."""
    token = tokenizer.id_to_token(token_id)
    if token in SPECIAL_TOKENS or token is None:
        return token or f"<{token_id}>"
    return tokenizer.decode([token_id], skip_special_tokens=False)
