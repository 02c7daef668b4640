"""Token streams of a split: random windows for training, fixed windows for evaluation."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from explorer.data.corpus import split_works
from explorer.data.tokenizer import EOS


class TokenStream:
    """All works of one split encoded and joined by `<eos>`, as one 1-D tensor of token ids."""

    def __init__(self, works: dict[str, str], split: str, tokenizer: Tokenizer):
        eos = tokenizer.token_to_id(EOS)
        ids: list[int] = []
        for text in split_works(works, split).values():
            ids.extend(tokenizer.encode(text).ids)
            ids.append(eos)
        self.split = split
        self.ids = torch.tensor(ids, dtype=torch.long)  # (N,)

    def __len__(self) -> int:
        return len(self.ids)

    def random_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(batch_size, length) windows at uniformly random offsets."""
        if len(self.ids) <= length:
            raise ValueError(f"the {self.split} split has {len(self.ids)} tokens, fewer than one window of {length}")
        starts = torch.randint(0, len(self.ids) - length, (batch_size,), generator=generator)
        return torch.stack([self.ids[s : s + length] for s in starts.tolist()])

    def windows(self, length: int) -> torch.Tensor:
        """(n, length) consecutive non-overlapping windows covering the split (the tail is dropped)."""
        n = len(self.ids) // length
        if n == 0:
            raise ValueError(f"the {self.split} split has {len(self.ids)} tokens, fewer than one window of {length}")
        return self.ids[: n * length].view(n, length)
