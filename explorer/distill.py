"""Certainty-forcing distillation (dParallel, Chen et al., arXiv:2509.26488): a masked diffusion model learns to follow
its own greedy trajectories while growing confident on the masked tokens of a block in parallel, so that Fast-dLLM's
threshold rule commits several tokens per network evaluation.

    python -m explorer train --family mdlm --init mdlm-tiny --shift --objective certainty --seq-len 80 ...

1. The teacher (the `--init` checkpoint) continues `teacher_prompts` windows of `prompt_len` tokens drawn from the
   train split with its semi-autoregressive low-confidence sampler (blocks of `distill_block`, T = 0, one token per
   network evaluation: the trajectory the student is to shortcut). The sequences are kept in OUT/teacher.safetensors,
   so a resumed run reads them back instead of generating them again.
2. Each sequence becomes two training rows (`semi_ar_masks`): the prompt and a random number of the generated blocks
   stay clean, every position after the next block is masked, and that block is masked at rate 1/2 in the first row
   and by the complementary mask in the second, so every token of the block is a target exactly once.
3. Per row, the loss is the mean cross-entropy on the block's masked positions (to the teacher's tokens) plus
   `ENTROPY_WEIGHT` times the mean entropy of softmax(logits / `ENTROPY_TEMPERATURE`) over the masked block positions
   whose argmax already equals the teacher's token: certainty is forced only where the model is right. The two
   rows' losses add, as in the paper's trainer (`certainty_forcing_loss`).

One departure from the published trainer: it draws the number of clean blocks from 0 to n (inclusive), and n leaves
no block to mask (a row without a loss); here it is drawn from 0 to n - 1. The paper fine-tunes LoRA adapters of
LLaDA-8B; this tiny model is fine-tuned whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from explorer.data import TokenStream

ENTROPY_WEIGHT = 2.0  # dParallel's weight of the certainty term
ENTROPY_TEMPERATURE = 0.5  # the softmax temperature of the certainty term's entropy
MASK_RATE = 0.5  # the block's mask rate in the first row (the second row masks the rest)
TEACHER_FILE = "teacher.safetensors"


def teacher_sequences(teacher, prompts: torch.Tensor, gen_length: int, block: int, progress: bool = True
                      ) -> torch.Tensor:
    """(N, P + gen_length) int64: each prompt row followed by the teacher's greedy low-confidence continuation
    (semi-autoregressive blocks of `block`, one token per network evaluation)."""
    from explorer.sampling import generate

    rows = []
    for prompt in tqdm(prompts.tolist(), desc="teacher trajectories", unit="seq", disable=not progress):
        trace = generate(teacher, prompt, sampler="low_confidence", gen_length=gen_length, steps=gen_length,
                         block_length=block, temperature=0.0, record="none")
        rows.append(prompt + trace.final_tokens)  # final_tokens: the generated part
    return torch.tensor(rows, dtype=torch.long)


def teacher_meta(init: str, prompts: int, prompt_len: int, seq_len: int, block: int, seed: int) -> dict[str, str]:
    """What the teacher file was generated with (safetensors metadata: strings); a run only reads a matching file."""
    return {"teacher": str(init), "teacher_prompts": str(prompts), "prompt_len": str(prompt_len),
            "seq_len": str(seq_len), "distill_block": str(block), "seed": str(seed)}


def teacher_prompts(stream: TokenStream, count: int, prompt_len: int, seed: int) -> torch.Tensor:
    """(count, prompt_len) windows of the train split at random offsets (fixed by `seed`)."""
    return stream.random_batch(count, prompt_len, torch.Generator().manual_seed(seed))


def save_teacher(path, sequences: torch.Tensor, meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({"sequences": sequences.to(torch.int32).contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a killed run leaves the old file or none


def load_teacher(path, meta: dict[str, str], vocab_size: int) -> torch.Tensor:
    """The sequences of `path`, refused unless they were generated with the settings in `meta` and hold token ids."""
    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata() or {}
        sequences = f.get_tensor("sequences").long()
    if saved != meta:
        raise ValueError(f"{path} was generated with other settings ({saved}); this run needs {meta}: "
                         f"remove the file to generate it again")
    if sequences.dim() != 2 or sequences.numel() == 0 or int(sequences.min()) < 0 or int(sequences.max()) >= vocab_size:
        raise ValueError(f"{path}: 'sequences' must be a non-empty (N, L) table of token ids below {vocab_size}")
    return sequences


class TeacherSequences:
    """The teacher's sequences as a training stream: `random_batch` picks whole rows (the length is fixed)."""

    def __init__(self, sequences: torch.Tensor):
        self.sequences = sequences

    def random_batch(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        if length != self.sequences.shape[1]:
            raise ValueError(f"teacher sequences hold {self.sequences.shape[1]} tokens, the run asks for {length}")
        return self.sequences[torch.randint(0, len(self.sequences), (batch_size,), generator=generator)]


def semi_ar_masks(batch_size: int, length: int, prompt_len: int, block: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_masked, target) boolean (2B, L): rows b and B + b are the two complementary maskings of sequence b.
    Blocks of `block` after the prompt; per sequence k ~ U{0..n-1} blocks stay clean, block k is the target (masked
    at MASK_RATE in row b, the complement in row B + b), positions after it are masked in both rows."""
    n_blocks = (length - prompt_len) // block
    k = torch.randint(0, n_blocks, (batch_size,), generator=generator)  # (B,) clean blocks
    lo = prompt_len + k * block  # (B,) the target block's start
    pos = torch.arange(length)  # (L,)
    in_block = (pos >= lo[:, None]) & (pos < lo[:, None] + block)  # (B, L)
    after = pos >= lo[:, None] + block
    first = torch.rand(batch_size, length, generator=generator) < MASK_RATE
    target = torch.cat([in_block & first, in_block & ~first])  # (2B, L)
    return target | torch.cat([after, after]), target


def certainty_forcing_loss(model, batch: torch.Tensor, prompt_len: int, block: int,
                           generator: torch.Generator | None = None) -> dict:
    """dParallel's loss on (B, L) teacher sequences: sum over the two complementary rows of CE on the target positions
    + ENTROPY_WEIGHT x entropy at the targets the model already gets right. Also the mean CE and entropy."""
    B, L = batch.shape
    masked, target = semi_ar_masks(B, L, prompt_len, block, generator)
    masked, target = masked.to(batch.device), target.to(batch.device)
    x0 = torch.cat([batch, batch])  # (2B, L)
    x_t = torch.where(masked, torch.full_like(x0, model.mask_id), x0)
    logits = model.denoiser_logits(x_t)[target]  # (n, V): only the target positions enter the loss
    labels = x0[target]  # (n,)
    second = (torch.arange(2 * B, device=batch.device) >= B)[:, None].expand(2 * B, L)[target]  # (n,) which row
    ce = F.cross_entropy(logits, labels, reduction="none")  # (n,)
    log_p = torch.log_softmax(logits / ENTROPY_TEMPERATURE, dim=-1)
    entropy = -(log_p.exp() * log_p.masked_fill(log_p.isinf(), 0)).sum(-1)  # (n,); the mask token's p is 0
    right = logits.argmax(-1) == labels
    loss = ce.new_zeros(())
    for half in (~second, second):
        r = right & half
        certainty = (entropy * r).sum() / r.sum().clamp_min(1)
        loss = loss + ce[half].sum() / half.sum().clamp_min(1) + ENTROPY_WEIGHT * certainty
    certain = (entropy * right).sum().detach() / right.sum().clamp_min(1)
    return {"loss": loss, "ce": ce.detach().mean(), "entropy": certain}
