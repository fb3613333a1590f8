"""Next-token cross-entropy fused with the output head and computed a chunk of rows at a time.

For each chunk the logits are computed, turned into the loss and, when training, straight into
the gradients of the hidden states and of the head's weight (which autograd then only scales),
so the [tokens, vocab] logits, their log-softmax and their gradient never exist in full. This
saves most of the memory traffic and allocation of ``F.cross_entropy(hidden @ weight.T)``.
Chunks are small on the CPU and large on GPUs (few, large matmuls); on the CPU a low-precision
chunk's fp32 softmax runs a few rows at a time, in a block that stays in cache, and the chunk's
logits buffer is kept between calls (`_logits_buffer`). Under
``torch.compile`` the plain form is used instead: the compiler fuses the softmax and its
gradient itself, and a chunk loop would only be unrolled into many small kernels.
"""

import threading

import torch
import torch.nn.functional as F

CHUNK_ROWS = {"cpu": 256}  # rows per chunk (one matmul) by device type; other devices: GPU_CHUNK_ROWS
GPU_CHUNK_ROWS = 4096
# Rows per fp32 softmax block of a low-precision chunk, by device type (other devices: the chunk).
# On the CPU a small block stays in cache and its buffer is reused rather than mapped afresh.
SOFTMAX_ROWS = {"cpu": 32}
_kept = threading.local()  # each thread's CPU logits buffer (`_logits_buffer`)


def head_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets``.

    hidden [tokens, emb_dim], weight [padded_vocab, emb_dim], targets [tokens]. Logit columns
    from ``vocab_size`` on (vocabulary padding) are masked out. Under autocast the matmuls run
    in the autocast dtype and the softmax in fp32, as autocast would do. With ``softcap`` the
    logits are ``softcap * tanh(logits / softcap)`` first.
    """
    if torch.compiler.is_compiling():
        logits = F.linear(hidden, weight)[:, :vocab_size].float()
        return F.cross_entropy(logits if softcap is None else softcap * torch.tanh(logits / softcap), targets)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _HeadCrossEntropy.apply(hidden, weight, targets, vocab_size, softcap)
    return _chunked(hidden, weight, targets, vocab_size, softcap, grad_hidden=False, grad_weight=False)[0]


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, softcap):
        loss, ctx.grad_hidden, ctx.grad_weight = _chunked(
            hidden, weight, targets, vocab_size, softcap,
            grad_hidden=hidden.requires_grad, grad_weight=weight.requires_grad,
        )
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        # The gradients were computed for a loss gradient of 1; scaling them in place spares a
        # copy of the [vocab, emb_dim] weight gradient (a second backward pass is not supported).
        grads = ctx.grad_hidden, ctx.grad_weight
        ctx.grad_hidden = ctx.grad_weight = None
        return *(None if g is None else g.mul_(grad_loss) for g in grads), None, None, None


@torch.no_grad()
def _chunked(hidden, weight, targets, vocab_size, softcap, *, grad_hidden, grad_weight):
    """(mean loss, its gradient w.r.t. hidden or None, its gradient w.r.t. weight or None)."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    with torch.autocast(device_type, enabled=False):
        n_rows, chunk = hidden.size(0), min(CHUNK_ROWS.get(device_type, GPU_CHUNK_ROWS), hidden.size(0))
        w = weight.to(dtype)
        logits = _logits_buffer(chunk, weight.size(0), dtype, hidden.device)  # logits, then their gradient
        # The softmax runs in fp32: in place on fp32 logits without a soft cap, else on an fp32 copy
        # of `block` rows at a time (the capped logits are kept for the cap's gradient).
        in_place = dtype == torch.float32 and softcap is None
        block = chunk if in_place else min(SOFTMAX_ROWS.get(device_type, chunk), chunk)
        log_probs = logits if in_place else hidden.new_empty(block, weight.size(0), dtype=torch.float32)
        loss = hidden.new_zeros((), dtype=torch.float32)
        d_hidden = hidden.new_empty(hidden.shape, dtype=dtype) if grad_hidden else None
        d_weight = None
        for start in range(0, n_rows, chunk):
            x = hidden[start : start + chunk].to(dtype)
            rows = x.size(0)
            chunk_logits = torch.mm(x, w.t(), out=logits[:rows])
            if softcap is not None:
                chunk_logits.div_(softcap).tanh_().mul_(softcap)
            chunk_logits[:, vocab_size:] = float("-inf")
            for first in range(0, rows, block):
                block_logits = chunk_logits[first : first + block]
                n = block_logits.size(0)
                block_log_probs = log_probs[:n] if in_place else log_probs[:n].copy_(block_logits)
                torch.log_softmax(block_log_probs, 1, out=block_log_probs)  # in place: row by row
                t = targets[start + first : start + first + n, None]
                loss -= block_log_probs.gather(1, t).sum()
                if grad_hidden or grad_weight:
                    _logit_gradient(block_logits, block_log_probs, t, vocab_size, softcap)
            if grad_hidden:
                torch.mm(chunk_logits, w, out=d_hidden[start : start + rows])
            if grad_weight and d_weight is None:
                d_weight = torch.mm(chunk_logits.t(), x).to(torch.float32)
            elif grad_weight and dtype == torch.float32:
                d_weight.addmm_(chunk_logits.t(), x)
            elif grad_weight:
                d_weight += chunk_logits.t() @ x
        scale = 1.0 / n_rows
        return (
            loss * scale,
            None if d_hidden is None else d_hidden.mul_(scale).to(hidden.dtype),
            None if d_weight is None else d_weight.mul_(scale).to(weight.dtype),
        )


def _logits_buffer(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized [rows, columns] buffer for a chunk's logits. On the CPU each thread keeps
    its last one (and reuses it for as many rows or fewer): an fp32 chunk's (256 x 50,304, 51 MB)
    is over glibc's largest mmap threshold (32 MiB), so a fresh one would be mapped, page-faulted
    in and unmapped at every call. Other devices' allocators reuse memory themselves."""
    if device.type != "cpu":
        return torch.empty(rows, columns, dtype=dtype, device=device)
    kept = getattr(_kept, "logits", None)
    if kept is None or kept.dtype != dtype or kept.size(1) != columns or kept.size(0) < rows:
        with torch.inference_mode(False):  # made in inference mode, no later training could write it
            kept = _kept.logits = torch.empty(max(rows, CHUNK_ROWS["cpu"]), columns, dtype=dtype)
    return kept[:rows]


def _logit_gradient(logits, log_probs, targets, vocab_size, softcap):
    """Overwrites `logits` with d loss / d logits = softmax - one_hot(target) (for the summed
    loss), from their fp32 `log_probs`, which it overwrites too (they may be `logits` itself)."""
    d_logits = log_probs.exp_().scatter_add_(1, targets, log_probs.new_full(targets.shape, -1.0))
    if softcap is not None:  # d (c tanh(z / c)) / dz = 1 - tanh(z / c)^2
        tanh = logits[:, :vocab_size].float() / softcap
        d_logits[:, :vocab_size].mul_(1 - tanh.square_())
    if d_logits.data_ptr() != logits.data_ptr():
        logits.copy_(d_logits)
