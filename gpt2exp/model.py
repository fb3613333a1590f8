"""GPT-2: pre-LayerNorm transformer blocks, SDPA causal attention, tied embeddings, KV cache."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# One layer's cached keys and values, each [batch, n_heads, past_len, head_dim].
LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GPTConfig:
    """The seed's model keys; the defaults are OpenAI's 124M GPT-2."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.drop_rate = cfg.drop_rate
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, past_kv: LayerKV | None = None) -> tuple[torch.Tensor, LayerKV]:
        batch, seq_len, emb_dim = x.shape
        q, k, v = self.qkv(x).split(emb_dim, dim=2)
        # [batch, seq_len, emb_dim] -> [batch, n_heads, seq_len, head_dim]
        q, k, v = (t.view(batch, seq_len, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if past_kv is not None:
            k = torch.cat((past_kv[0], k), dim=2)
            v = torch.cat((past_kv[1], v), dim=2)
        dropout_p = self.drop_rate if self.training else 0.0
        if past_kv is None or seq_len == k.size(2):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # New queries sit at the end of the cached sequence: query i sees keys up to past_len + i.
            past_len = k.size(2) - seq_len
            mask = torch.ones(seq_len, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=past_len)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, seq_len, emb_dim)
        return self.resid_drop(self.out_proj(out)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.out_proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out_proj(F.gelu(self.fc(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor, past_kv: LayerKV | None = None) -> tuple[torch.Tensor, LayerKV]:
        attn_out, kv = self.attn(self.norm1(x), past_kv)
        x = x + attn_out
        x = x + self.ff(self.norm2(x))
        return x, kv


class GPTModel(nn.Module):
    """GPT-2 language model; the output head shares the token embedding's weights."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.out_head.weight = self.tok_emb.weight
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
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, token_ids: torch.Tensor, past_kv: list[LayerKV] | None = None, use_cache: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[LayerKV]]:
        """Logits [batch, seq_len, vocab_size]; with ``use_cache`` also each layer's keys/values."""
        seq_len = token_ids.size(1)
        past_len = past_kv[0][0].size(2) if past_kv else 0
        if past_len + seq_len > self.cfg.context_length:
            raise ValueError(
                f"sequence of {past_len + seq_len} tokens exceeds context_length={self.cfg.context_length}"
            )
        positions = torch.arange(past_len, past_len + seq_len, device=token_ids.device)
        x = self.drop_emb(self.tok_emb(token_ids) + self.pos_emb(positions))  # [batch, seq_len, emb_dim]
        present_kv = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past_kv[i] if past_kv else None)
            present_kv.append(kv)
        logits = self.out_head(self.final_norm(x))
        return (logits, present_kv) if use_cache else logits
