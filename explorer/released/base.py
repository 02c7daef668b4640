"""What every released model shares: special ids read from its folder, and no re-saving."""

from __future__ import annotations


class ReleasedModel:
    """Mixed into the released models (LLaDA, Dream, the DiT releases) before their family class. Their special
    ids come from the folder's config.json and tokenizer (`self.special`: "mask", "bos", "eos", "pad", "eot" ->
    id or None), not from our tokenizer's token names; a release is read from its own layout, never re-saved."""

    special: dict[str, int | None]
    layout: str  # the released layout this model was read from
    chat_template: str | list | None = None  # tokenizer_config.json's Jinja chat template, when present
    checkpoint_path: str | None = None  # the folder (set on loading)
    checkpoint_info: dict = {}  # its config.json (set on loading)

    @property
    def mask_id(self) -> int:
        return self.special["mask"]

    @property
    def bos_id(self) -> int | None:
        return self.special.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special.get("eos")

    @property
    def pad_id(self) -> int | None:
        return self.special.get("pad")

    @property
    def eot_id(self) -> int | None:
        """End of an Instruct turn (LLaDA's <|eot_id|>, Dream's <|im_end|>), None when the folder has none."""
        return self.special.get("eot")

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer (the masked samplers skip the blocks after one): eos and end of turn."""
        return tuple(t for t in (self.eos_id, self.eot_id) if t is not None)

    def save_pretrained(self, path, extra=None, dtype=None):
        raise NotImplementedError(f"released {self.layout} checkpoints are read from their own layout; they are not "
                                  "re-saved")
