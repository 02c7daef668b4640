"""CALM: a continuous autoregressive language model. An autoencoder packs K tokens into one vector; a
causal Transformer predicts the next vector with an energy head (likelihood-free), one chunk per step.

The autoencoder is MLP-only: K token embeddings, a residual SwiGLU layer per token, concatenation,
`Linear(K d -> d)`, one more layer, RMSNorm and `Linear(d -> 2 l)` for the mean and log-std of an
l-dimensional latent; the decoder mirrors it and ties its output head to the token embedding. Its
robustness comes from DropToken (15% of input tokens replaced by [MASK]), DropLatent (dropout 0.15
on z) and a KL term clipped per dimension at 0.5 nats (weight 1e-3), so that nearby latents still
decode to the same tokens: the language model's predictions are never exact.

The language model reads the previous chunk's K tokens (embedded, concatenated and compressed by
`Linear(K d -> 2d) -> SiLU -> Linear(2d -> d) -> LayerNorm`) at each chunk position of the shared
causal Transformer; the energy head turns the hidden state and uniform noise into a latent sample
(one head pass per sample), trained with the energy score against samples of the autoencoder's posterior.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from explorer.models.base import CONFIG, LanguageModel, atomic_write, build_and_load, parse_config, read_config
from explorer.nn import TransformerConfig
from explorer.nn.transformer import RMSNorm, SwiGLU

AUTOENCODER = "autoencoder.safetensors"


@dataclass(frozen=True)
class AutoencoderConfig:
    vocab_size: int = 2048  # token ids (the tokenizer's size)
    chunk: int = 4  # K: tokens per latent vector
    d_model: int = 128  # token embedding and hidden width
    d_ff: int = 256  # SwiGLU hidden width of each residual layer
    latent_dim: int = 64  # l: size of the latent vector
    drop_token: float = 0.15  # DropToken: share of input tokens replaced by [MASK] in training
    drop_latent: float = 0.15  # DropLatent: dropout on z in training
    kl_weight: float = 1e-3  # weight of the KL term
    kl_clip: float = 0.5  # per-dimension KL floor (nats): dimensions below it get no gradient toward the prior
    norm_eps: float = 1e-5  # RMSNorm epsilon

    def __post_init__(self):
        if self.chunk < 1:
            raise ValueError(f"chunk (K) must be >= 1, got {self.chunk}")
        for knob in ("drop_token", "drop_latent"):
            if not 0 <= getattr(self, knob) < 1:
                raise ValueError(f"{knob} must be in [0, 1), got {getattr(self, knob)}")


class ResidualSwiGLU(nn.Module):
    """x + SwiGLU(RMSNorm(x)): the autoencoder's only kind of layer."""

    def __init__(self, d: int, d_ff: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(d, eps)
        self.mlp = SwiGLU(TransformerConfig(d_model=d, d_ff=d_ff, n_heads=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Autoencoder(nn.Module):
    """K tokens (..., K) <-> one latent vector (..., l)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.enc_token = ResidualSwiGLU(c.d_model, c.d_ff, c.norm_eps)
        self.enc_squeeze = nn.Linear(c.chunk * c.d_model, c.d_model)
        self.enc_mix = ResidualSwiGLU(c.d_model, c.d_ff, c.norm_eps)
        self.enc_norm = RMSNorm(c.d_model, c.norm_eps)
        self.to_latent = nn.Linear(c.d_model, 2 * c.latent_dim)  # mean, log-std
        self.from_latent = nn.Linear(c.latent_dim, c.d_model)
        self.dec_mix = ResidualSwiGLU(c.d_model, c.d_ff, c.norm_eps)
        self.dec_expand = nn.Linear(c.d_model, c.chunk * c.d_model)
        self.dec_token = ResidualSwiGLU(c.d_model, c.d_ff, c.norm_eps)
        self.dec_norm = RMSNorm(c.d_model, c.norm_eps)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (..., K) -> posterior mean and log-std, each (..., l)."""
        h = self.enc_token(self.embed(tokens))  # (..., K, d)
        h = self.enc_squeeze(h.flatten(-2))  # (..., d)
        h = self.enc_norm(self.enc_mix(h))
        mean, log_std = self.to_latent(h).chunk(2, dim=-1)
        return mean, log_std.clamp(-10, 5)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., l) -> logits (..., K, V); the head is the token embedding."""
        h = self.dec_mix(self.from_latent(z))  # (..., d)
        h = self.dec_expand(h).unflatten(-1, (self.config.chunk, self.config.d_model))  # (..., K, d)
        return self.dec_norm(self.dec_token(h)) @ self.embed.weight.T

    def sample_posterior(self, mean, log_std, samples: int, generator=None) -> torch.Tensor:
        """(..., samples, l) draws of z ~ N(mean, std^2)."""
        eps = torch.randn(*mean.shape[:-1], samples, mean.shape[-1], generator=generator).to(mean.device)
        return mean[..., None, :] + log_std.exp()[..., None, :] * eps

    def loss(self, tokens: torch.Tensor, mask_id: int, generator=None) -> dict:
        """tokens (B, K): CE summed over the chunk + kl_weight * clipped KL; DropToken and DropLatent in training."""
        c = self.config
        inputs = tokens
        if self.training and c.drop_token > 0:
            dropped = (torch.rand(tokens.shape, generator=generator) < c.drop_token).to(tokens.device)
            inputs = torch.where(dropped, torch.full_like(tokens, mask_id), tokens)
        mean, log_std = self.encode(inputs)
        z = self.sample_posterior(mean, log_std, 1, generator)[..., 0, :] if self.training else mean
        if self.training and c.drop_latent > 0:
            keep = (torch.rand(z.shape, generator=generator) >= c.drop_latent).to(z.device)
            z = z * keep / (1 - c.drop_latent)
        logits = self.decode(z)  # (B, K, V)
        ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(tokens.shape).sum(-1)
        kl = 0.5 * (mean**2 + (2 * log_std).exp() - 1) - log_std  # (B, l) per dimension
        kl_clipped = kl.clamp(min=c.kl_clip)
        loss = ce.mean() + c.kl_weight * kl_clipped.sum(-1).mean()
        accuracy = (logits.argmax(-1) == tokens).float().mean()
        return {"loss": loss, "ce": ce.mean().detach(), "kl": kl.sum(-1).mean().detach(), "accuracy": accuracy.detach(),
                "kl_per_dim": kl.mean(0).detach()}

    # --- save / load: safetensors + JSON, like the language models -----------------------------------------

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(path / AUTOENCODER, lambda tmp: save_file(state, str(tmp)))
        config = {"family": "calm-autoencoder", "autoencoder": asdict(self.config)} | (extra or {})
        atomic_write(path / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Autoencoder":
        """An autoencoder folder (config.json, autoencoder.safetensors), checked like a language model's."""
        path = Path(path)
        config = read_config(path)
        if config.get("family") != "calm-autoencoder":
            raise ValueError(f"{path / CONFIG}: not a CALM autoencoder (family {config.get('family')!r})")
        if "autoencoder" not in config:
            raise ValueError(f"{path / CONFIG}: missing field 'autoencoder' (the autoencoder's configuration)")
        autoencoder_config = parse_config(AutoencoderConfig, config["autoencoder"], path / CONFIG, "autoencoder")
        return build_and_load(lambda: cls(autoencoder_config), path, "CALM autoencoder", AUTOENCODER).eval()


@torch.no_grad()
def reconstruction_accuracy(autoencoder: Autoencoder, chunks: torch.Tensor, sigma: float = 0.0,
                            seed: int = 0) -> float:
    """Token accuracy of decode(mean + sigma * noise) on chunks (N, K): robustness of the latent space."""
    autoencoder.eval()
    mean, _ = autoencoder.encode(chunks)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)).to(mean.device)
    logits = autoencoder.decode(mean + sigma * noise)
    return float((logits.argmax(-1) == chunks).float().mean())


@torch.no_grad()
def collapsed_dimensions(autoencoder: Autoencoder, chunks: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions whose mean KL to the prior is below `threshold` nats (they carry no information)."""
    autoencoder.eval()
    mean, log_std = autoencoder.encode(chunks)
    kl = (0.5 * (mean**2 + (2 * log_std).exp() - 1) - log_std).mean(0)
    return int((kl < threshold).sum())


# --- the language model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CALMConfig:
    backbone: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(attention="causal", max_seq_len=32)
    )  # causal over chunk positions: max_seq_len = context tokens / K
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # frozen, trained first
    head_layers: int = 4  # residual gated MLP blocks of the energy head
    head_noise_dim: int = 64  # uniform noise U[-0.5, 0.5]^n fed to the head (one draw per sample)
    n_samples: int = 8  # N: head samples per position in the energy loss
    n_targets: int = 100  # M: posterior samples of the target latent per position

    def __post_init__(self):
        if isinstance(self.autoencoder, dict):
            object.__setattr__(self, "autoencoder", AutoencoderConfig(**self.autoencoder))
        if self.backbone.attention != "causal":
            raise ValueError("the calm family needs attention='causal'")
        if self.n_samples < 2:
            raise ValueError(f"n_samples (N) must be >= 2 for the energy loss, got {self.n_samples}")
        if self.n_targets < 1:
            raise ValueError(f"n_targets (M) must be >= 1, got {self.n_targets}")

    @property
    def chunk(self) -> int:
        return self.autoencoder.chunk


class GatedBlock(nn.Module):
    """x + W_down(SiLU(W_gate h) * W_up h), h = RMSNorm(x) + W_c c: a residual gated MLP conditioned on c."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(d, eps)
        self.condition = nn.Linear(d, d)
        self.mlp = SwiGLU(TransformerConfig(d_model=d, d_ff=d, n_heads=1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x) + self.condition(c))


class EnergyHead(nn.Module):
    """Hidden state (..., d) and uniform noise (..., n) -> one latent sample (..., l) per noise draw.

    The hidden state may have size 1 where the noise has several samples: each block projects the condition
    once and broadcasts it, so N samples cost N passes of everything but the condition projections."""

    def __init__(self, d: int, latent_dim: int, noise_dim: int, layers: int, eps: float):
        super().__init__()
        self.noise_in = nn.Linear(noise_dim, d)
        self.noise_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(GatedBlock(d, eps) for _ in range(layers))
        self.out = nn.Linear(d, latent_dim)
        nn.init.zeros_(self.out.weight)  # starts by predicting 0 (the prior's mean)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.noise_norm(self.noise_in(noise))
        for block in self.blocks:
            x = block(x, hidden)
        return self.out(x)


class CALMModel(LanguageModel):
    family = "calm"
    config_class = CALMConfig

    def __init__(self, config: CALMConfig, tokenizer):
        super().__init__(config, tokenizer)
        d, K = config.backbone.d_model, config.chunk
        self.compress = nn.Sequential(nn.Linear(K * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d), nn.LayerNorm(d))
        self.head = EnergyHead(d, config.autoencoder.latent_dim, config.head_noise_dim, config.head_layers,
                               config.backbone.norm_eps)
        self.autoencoder = Autoencoder(config.autoencoder)
        self.autoencoder.requires_grad_(False)

    @property
    def chunk(self) -> int:
        return self.config.chunk

    @property
    def max_seq_len(self) -> int:
        """Context in tokens (the backbone's positions are chunks)."""
        return self.config.backbone.max_seq_len * self.chunk

    def chunk_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, C*K) -> the inputs (B, C, K) each chunk position reads: the previous chunk (<bos> x K first)."""
        B = tokens.shape[0]
        chunks = tokens.view(B, -1, self.chunk)
        start = torch.full((B, 1, self.chunk), self.bos_id, dtype=tokens.dtype, device=tokens.device)
        return torch.cat([start, chunks[:, :-1]], dim=1)

    def hidden_states(self, inputs: torch.Tensor, cache=None) -> torch.Tensor:
        """inputs (B, C, K) previous-chunk tokens -> backbone hidden states (B, C, d)."""
        x = self.compress(self.backbone.embed(inputs).flatten(-2))  # (B, C, d)
        _, hidden = self.backbone(None, embeds=x, cache=cache, return_hidden=True, logits_for=slice(0, 0))
        return hidden

    def prefix_state(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """tokens (B, C*K), C >= 0 whole chunks -> (B, d): the backbone state that predicts chunk C + 1 (every
        chunk position reads the previous chunk, so the last prefix chunk is read once more at the end)."""
        K = self.chunk
        if tokens.shape[1] % K:
            raise ValueError(f"the prefix length ({tokens.shape[1]}) must be a multiple of K={K} for calm")
        tokens = tokens.to(self.device)
        inputs = torch.cat([self.chunk_inputs(tokens), tokens.view(len(tokens), -1, K)[:, -1:]], dim=1)
        return self.hidden_states(inputs, cache=cache)[:, -1]

    def sample_latents(self, hidden: torch.Tensor, samples: int, generator=None) -> torch.Tensor:
        """hidden (..., d) -> (..., samples, l): one head pass per sample, uniform noise from the generator."""
        noise = torch.rand(*hidden.shape[:-1], samples, self.config.head_noise_dim, generator=generator) - 0.5
        return self.head(hidden[..., None, :], noise.to(hidden.device))  # the condition broadcasts over samples

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Energy score of N head samples against M posterior samples of each target chunk's latent."""
        from explorer import kernels

        B, L = batch.shape
        if L % self.chunk:
            raise ValueError(f"sequence length {L} must be a multiple of the chunk size K={self.chunk}")
        batch = batch.to(self.device)
        hidden = self.hidden_states(self.chunk_inputs(batch))  # (B, C, d)
        samples = self.sample_latents(hidden, self.config.n_samples, generator)  # (B, C, N, l)
        with torch.no_grad():
            mean, log_std = self.autoencoder.encode(batch.view(B, -1, self.chunk))
            targets = self.autoencoder.sample_posterior(mean, log_std, self.config.n_targets, generator)
        energy = kernels.energy_score(samples.flatten(0, 1), targets.flatten(0, 1))  # (B*C,)
        loss = energy.mean()
        return {"loss": loss, "nll_sum": energy.sum().detach(), "tokens": int(energy.numel())}
