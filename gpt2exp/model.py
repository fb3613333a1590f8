"""GPT-2: pre-LayerNorm transformer blocks, SDPA causal attention, tied embeddings, KV cache.

Two options make it the tutorial's `GPTModel` (*Build a Large Language Model (From Scratch)*)
instead of OpenAI's: an output head of its own (`tie_embeddings=False`) and PyTorch's default
initialisation (`weight_init="torch_default"`: embeddings N(0, 1), Linear layers uniform).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2exp.config import ModelConfig
from gpt2exp.loss import head_cross_entropy


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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.drop_rate = cfg.drop_rate
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(
        self, x: torch.Tensor, layer_kv: torch.Tensor | None = None, past_len: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``layer_kv`` is this layer's slice of a ``KVCache``; ``mask`` (True = may attend) is
        needed only when the plain causal rule from position 0 does not hold. A tensor
        ``past_len`` writes one token's keys/values there and attends over the whole cache."""
        batch, seq_len, emb_dim = x.shape
        q, k, v = self.qkv(x).split(emb_dim, dim=2)
        # [batch, seq_len, emb_dim] -> [batch, n_heads, seq_len, head_dim]
        q, k, v = (t.view(batch, seq_len, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if isinstance(past_len, torch.Tensor):
            layer_kv[0].index_copy_(2, past_len.view(1), k)
            layer_kv[1].index_copy_(2, past_len.view(1), v)
            k, v = layer_kv[0], layer_kv[1]
        elif layer_kv is not None:
            end = past_len + seq_len
            layer_kv[0, :, :, past_len:end] = k
            layer_kv[1, :, :, past_len:end] = v
            k, v = layer_kv[0, :, :, :end], layer_kv[1, :, :, :end]
        dropout_p = self.drop_rate if self.training else 0.0
        is_causal = mask is None and seq_len > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(batch, seq_len, emb_dim)
        return self.resid_drop(self.out_proj(out))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.out_proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out_proj(F.gelu(self.fc(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_epsilon)
        self.ff = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, layer_kv: torch.Tensor | None = None, past_len: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), layer_kv, past_len, mask)
        return x + self.ff(self.norm2(x))


class GPTModel(nn.Module):
    """GPT-2 language model; the output head shares the token embedding's weights unless
    ``cfg.tie_embeddings`` is false.

    ``activation_checkpointing`` (a training setting, not part of the model) recomputes each
    block's activations in the backward pass instead of keeping them: less memory, ~1/3 more compute.
    """

    def __init__(self, cfg: ModelConfig, *, activation_checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_epsilon)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        if cfg.weight_init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2 scales the residual projections by 1/sqrt(number of residual additions).
            for name, param in self.named_parameters():
                if name.endswith("out_proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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
        computed without materialising the logits (see ``gpt2exp.loss``).
        """
        hidden = self.hidden_states(token_ids, cache, pad)
        if targets is not None:
            return head_cross_entropy(
                hidden.flatten(0, 1), self.out_head.weight, targets.flatten(), vocab_size=self.cfg.vocab_size
            )
        return self.out_head(hidden)[..., : self.cfg.vocab_size]

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
        x = self.drop_emb(self.tok_emb(token_ids) + self.pos_emb(positions))  # [batch, seq_len, emb_dim]
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, None, 0, mask, use_reentrant=False)
            else:
                x = block(x, cache.kv[i] if cache is not None else None, past_len, mask)
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
        x = self.drop_emb(self.tok_emb(token_ids) + self.pos_emb(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, cache.kv[i], slot, mask)
        return self.final_norm(x)


def _padded_causal_mask(positions: torch.Tensor, pad: torch.Tensor, end: int) -> torch.Tensor:
    """[batch, 1, seq_len, end] True where a query may attend: causally, and never to padding
    (a padding query attends to itself only, so no row is all masked)."""
    keys = torch.arange(end, device=positions.device)
    queries = positions[:, None]
    allowed = (keys <= queries) & ((keys >= pad[:, None, None]) | (keys == queries))
    return allowed[:, None]
