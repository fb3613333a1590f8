"""GPT-2: pre-LayerNorm transformer blocks, SDPA causal attention, tied embeddings, KV cache.

Two options make it the tutorial's `GPTModel` (*Build a Large Language Model (From Scratch)*)
instead of OpenAI's: an output head of its own (`tie_embeddings=False`) and PyTorch's default
initialisation (`weight_init="torch_default"`: embeddings N(0, 1), Linear layers uniform).
Others bring today's variants (rotary positions, RMSNorm, QK-norm, ReLU² or SwiGLU MLPs,
zero-initialised projections, no biases, logit soft-capping); each default is GPT-2's.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from gpt2exp.config import ModelConfig
from gpt2exp.modeling.loss import head_cross_entropy


class KVCache:
    """Every layer's keys and values for up to ``context_length`` positions, allocated once.

    ``length`` counts the filled positions; the model writes new keys/values after them and
    advances it; only filled positions are read (``GPTModel.decode_hidden`` reads all of them
    under a mask, so they start as zeros, never NaN). Set ``length = 0`` to refill it from scratch.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, *, device=None, dtype=torch.float32):
        head_dim = cfg.emb_dim // cfg.n_heads
        # [n_layers, keys/values, batch, n_heads, context_length, head_dim]
        self.kv = torch.zeros(cfg.n_layers, 2, batch_size, cfg.n_heads, cfg.context_length, head_dim,
                              device=device, dtype=dtype)
        self.length = 0


Rotary = tuple[torch.Tensor, torch.Tensor]  # cos and sin [batch or 1, 1, seq_len, head_dim / 2]


def rotary_angles(positions: torch.Tensor, head_dim: int, base: float) -> Rotary:
    """cos and sin of each position's rotation angles (RoFormer, Su et al. 2021): pair i of a
    head turns by position * base^(-2i / head_dim). ``positions``: [seq_len] or [batch, seq_len]."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    angles = angles.view(-1, 1, *angles.shape[-2:])  # [batch or 1, 1, seq_len, head_dim / 2]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """``x`` [batch, n_heads, seq_len, head_dim] rotated: its first and second halves are the
    pairs' two coordinates (GPT-NeoX's layout, as modded-nanogpt's)."""
    cos, sin = (t.to(x.dtype) for t in rotary)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.emb_dim, eps=cfg.layer_norm_epsilon)
    return nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_epsilon, bias=cfg.bias)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` (Gemma 2's logit soft-capping), or the logits when ``cap`` is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.drop_rate = cfg.drop_rate
        self.qk_norm_eps = cfg.layer_norm_epsilon if cfg.qk_norm else None
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias and cfg.bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(
        self, x: torch.Tensor, layer_kv: torch.Tensor | None = None, past_len: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None, rotary: Rotary | None = None,
    ) -> torch.Tensor:
        """``layer_kv`` is this layer's slice of a ``KVCache``; ``mask`` (True = may attend) is
        needed only when the plain causal rule from position 0 does not hold. A tensor
        ``past_len`` writes one token's keys/values there and attends over the whole cache.
        ``rotary`` (with ``pos_emb=rope``) rotates the new queries and keys by their positions."""
        batch, seq_len, emb_dim = x.shape
        q, k, v = self.qkv(x).split(emb_dim, dim=2)
        # [batch, seq_len, emb_dim] -> [batch, n_heads, seq_len, head_dim]
        q, k, v = (t.view(batch, seq_len, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm_eps is not None:
            q, k = (F.rms_norm(t, (t.size(-1),), eps=self.qk_norm_eps) for t in (q, k))
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if isinstance(past_len, torch.Tensor):  # the fixed-shape step: always over a cache
            assert layer_kv is not None
            layer_kv[0].index_copy_(2, past_len.view(1), k)
            layer_kv[1].index_copy_(2, past_len.view(1), v)
            k, v = layer_kv[0], layer_kv[1]
        elif layer_kv is not None:
            end = past_len + seq_len
            layer_kv[0, :, :, past_len:end] = k
            layer_kv[1, :, :, past_len:end] = v
            k, v = layer_kv[0, :, :, :end], layer_kv[1, :, :, :end]
        dropout_p = self.drop_rate if self.training else 0.0
        # Without a cache the sequence attends causally to itself (a plain Python bool, also when
        # torch.compile traces seq_len as a symbol); a one-token step attends to the whole cache.
        is_causal = mask is None and (layer_kv is None or seq_len > 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(batch, seq_len, emb_dim)
        return self.resid_drop(self.out_proj(out))


class FeedForward(nn.Module):
    """GPT-2's MLP (GELU), or with ReLU² (modded-nanogpt) or SwiGLU (Shazeer 2020; ``fc`` holds
    the gate's and the up projection's rows, one Linear)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = cfg.mlp_hidden_dim
        self.fc = nn.Linear(cfg.emb_dim, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=cfg.bias)
        self.out_proj = nn.Linear(hidden, cfg.emb_dim, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "relu2":
            h = F.relu(h).square()
        elif self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.out_proj(h))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.ff = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, layer_kv: torch.Tensor | None = None, past_len: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None, rotary: Rotary | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), layer_kv, past_len, mask, rotary)
        return x + self.ff(self.norm2(x))


class GPTModel(nn.Module):
    """GPT-2 language model; the output head shares the token embedding's weights unless
    ``cfg.tie_embeddings`` is false.

    ``activation_checkpointing`` (a training setting, not part of the model) recomputes each
    block's activations in the backward pass instead of keeping them: less memory, ~1/3 more compute.
    """

    lora_base: dict | None = None  # the base model's identity once LoRA adapters are added (modeling.lora)

    def __init__(self, cfg: ModelConfig, *, activation_checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.pos_emb == "learned" else None
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = make_norm(cfg)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.padded_vocab_size, bias=False)
        self.tie_head()
        if cfg.weight_init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2 scales the residual projections by 1/sqrt(number of residual additions).
            for name, param in self.named_parameters():
                if name.endswith("out_proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.zero_init_proj:  # each block starts as the identity (modded-nanogpt)
            for name, param in self.named_parameters():
                if name.endswith("out_proj.weight"):
                    nn.init.zeros_(param)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tie_head(self) -> None:
        """Make the output head share the token embedding's weight, where ``cfg.tie_embeddings``
        (again after ``to_empty``, which gives each module a tensor of its own)."""
        if self.cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    @classmethod
    def unfilled(cls, cfg: ModelConfig, device: torch.device | str = "meta", **options) -> "GPTModel":
        """``GPTModel(cfg, **options)`` whose weights are never initialized, for a state dict to fill
        (``load_state_dict``, which must then set every weight): on the meta device, the names and
        shapes alone. Skipping the random init saves its time on the CPU and, on the meta device,
        the import of torch._dynamo (PyTorch runs a meta tensor's random init as Python code)."""
        with torch.device("meta"), _SkipInit():
            model = cls(cfg, **options)
        if torch.device(device).type != "meta":
            model.to_empty(device=device).tie_head()
        return model

    def num_parameters(self) -> int:
        """Trainable parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        token_ids: torch.Tensor,
        cache: KVCache | None = None,
        pad: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq_len, vocab_size] for [batch, seq_len] tokens (see ``hidden_states``).

        With ``targets`` [batch, seq_len] it returns the mean next-token cross-entropy instead,
        computed without materialising the logits (see ``gpt2exp.modeling.loss``).
        """
        hidden = self.hidden_states(token_ids, cache, pad)
        if targets is not None:
            return head_cross_entropy(
                hidden.flatten(0, 1), self.out_head.weight, targets.flatten(), vocab_size=self.cfg.vocab_size,
                softcap=self.cfg.logit_softcap,
            )
        return self.soft_cap(self.out_head(hidden)[..., : self.cfg.vocab_size])

    def soft_cap(self, logits: torch.Tensor) -> torch.Tensor:
        """The output head's ``logits`` soft-capped by ``cfg.logit_softcap`` (unchanged when it is off)."""
        return soft_cap(logits, self.cfg.logit_softcap)

    def hidden_states(
        self, token_ids: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final-norm outputs [batch, seq_len, emb_dim] that the output head turns into logits.

        With a ``cache`` the tokens follow the ``cache.length`` cached ones. ``pad`` [batch]
        counts each row's left-padding tokens from the sequence's start: they are never
        attended to and positions start after them, so a padded row computes what it would alone.
        """
        seq_len = token_ids.size(1)
        past_len = cache.length if cache is not None else 0
        end = past_len + seq_len
        if end > self.cfg.context_length:
            raise ValueError(f"sequence of {end} tokens exceeds context_length={self.cfg.context_length}")
        positions = torch.arange(past_len, end, device=token_ids.device)
        mask = None
        if pad is not None:
            mask = _padded_causal_mask(positions, pad, end)
            positions = (positions - pad[:, None]).clamp(min=0)  # [batch, seq_len]
        elif past_len and seq_len > 1:
            mask = torch.ones(seq_len, end, dtype=torch.bool, device=token_ids.device).tril(diagonal=past_len)
        x, rotary = self._embed(token_ids, positions)  # [batch, seq_len, emb_dim]
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, None, 0, mask, rotary, use_reentrant=False)
            else:
                x = block(x, cache.kv[i] if cache is not None else None, past_len, mask, rotary)
        if cache is not None:
            cache.length = end
        return self.final_norm(x)

    def decode_hidden(
        self, token_ids: torch.Tensor, slot: torch.Tensor, cache: KVCache, pad: torch.Tensor
    ) -> torch.Tensor:
        """``hidden_states`` of one new token per row ([batch, 1]) stored at cache position
        ``slot`` (a 0-dim tensor), with every shape fixed whatever the position: each layer
        attends over the cache's whole length under a mask. A CUDA graph can replay it.
        ``pad`` [batch] counts each row's left padding (zeros when there is none);
        ``cache.length`` is left to the caller."""
        keys = torch.arange(self.cfg.context_length, device=token_ids.device)
        mask = ((keys <= slot) & (keys >= pad[:, None]))[:, None, None]  # [batch, 1, 1, context_length]
        positions = (slot - pad)[:, None]  # [batch, 1]
        x, rotary = self._embed(token_ids, positions)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.kv[i], slot, mask, rotary)
        return self.final_norm(x)

    def _embed(self, token_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rotary | None]:
        """The blocks' input, and the rotary angles of ``positions`` ([seq_len] or [batch, seq_len])
        with ``pos_emb=rope`` (None with learned position embeddings, added here)."""
        if self.pos_emb is not None:
            return self.drop_emb(self.tok_emb(token_ids) + self.pos_emb(positions)), None
        rotary = rotary_angles(positions, self.cfg.emb_dim // self.cfg.n_heads, self.cfg.rope_base)
        return self.drop_emb(self.tok_emb(token_ids)), rotary


def _padded_causal_mask(positions: torch.Tensor, pad: torch.Tensor, end: int) -> torch.Tensor:
    """[batch, 1, seq_len, end] True where a query may attend: causally, and never to padding
    (a padding query attends to itself only, so no row is all masked)."""
    keys = torch.arange(end, device=positions.device)
    queries = positions[:, None]
    allowed = (keys <= queries) & ((keys >= pad[:, None, None]) | (keys == queries))
    return allowed[:, None]


class _SkipInit(TorchFunctionMode):
    """Calls of ``torch.nn.init`` functions (what ``nn.Module`` constructors initialize with)
    leave their tensor as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))
