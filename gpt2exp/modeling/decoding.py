"""Next-token selection (greedy, temperature, top-k, top-p) and KV-cached generation."""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpt2exp.config import DecodingConfig
from gpt2exp.modeling.inference_layout import PackedLinear
from gpt2exp.modeling.model import GPTModel, KVCache

log = logging.getLogger(__name__)

Generators = torch.Generator | Sequence[torch.Generator] | None
Step = Callable[[], torch.Tensor]


def filter_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The tutorial's rules on [batch, vocab] logits: keep logits >= the k-th largest, divide
    by the temperature, then keep the smallest set of tokens whose probability reaches top_p."""
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token_probs(
    logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution ``next_token`` draws from; temperature 0 puts all mass on the argmax."""
    if temperature == 0:
        return torch.zeros_like(logits, dtype=torch.float).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return torch.softmax(filter_logits(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Pick one token per row of [batch, vocab] logits -> [batch, 1]; temperature 0 is argmax.

    ``generator`` is one generator for the whole batch, or one per row (then each row draws
    exactly what it would draw alone)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, num_samples=1, generator=generator)
    return torch.cat([torch.multinomial(row[None], num_samples=1, generator=g) for row, g in zip(probs, generator)])


@dataclass
class Generation:
    """What ``generate`` made, one list per prompt."""

    prompts: list[list[int]]
    new_tokens: list[list[int]]  # up to and excluding the first eos_id
    logprobs: list[list[float]]  # each new token's log-probability under the model at temperature 1

    @property
    def token_ids(self) -> list[list[int]]:
        """Each prompt followed by its new tokens."""
        return [prompt + new for prompt, new in zip(self.prompts, self.new_tokens)]


@torch.inference_mode()
def generate(
    model: GPTModel,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: Generators = None,
    use_cache: bool = True,
    cuda_graph: bool = True,
) -> Generation:
    """Extend each prompt (a [batch, seq_len] tensor or lists of different lengths) by up to
    ``max_new_tokens`` tokens, as the tutorial does one prompt at a time.

    Each step sees a row's last ``context_length`` tokens. Shorter prompts are left-padded and
    the padding is masked out, so each row gets what it would get alone (with one generator
    per row when sampling). A row stops at ``eos_id`` (not included); generation stops when
    every row has. With ``use_cache`` each step feeds only the newest token to a ``KVCache``;
    once the window is full it slides, which with absolute positions means recomputing it,
    so the output equals the uncached one. On CUDA, with ``cuda_graph``, the one-token steps
    replay a CUDA graph (see ``GraphedDecodeStep``): one launch each instead of hundreds. Should
    capturing or replaying the graph raise, a warning names the error and generation goes on
    without it, with the same tokens; no later call tries a graph on that device again.
    """
    prompt_lists: list[list[int]] = prompts.tolist() if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
    if not prompt_lists or not all(prompt_lists):
        raise ValueError("every prompt needs at least one token")
    device = model.tok_emb.weight.device
    batch, width = len(prompt_lists), max(len(p) for p in prompt_lists)
    pad_counts = [width - len(p) for p in prompt_lists]
    pad = torch.tensor(pad_counts, device=device) if any(pad_counts) else None
    token_ids = torch.zeros(batch, width + max_new_tokens, dtype=torch.long, device=device)
    token_ids[:, :width] = torch.tensor([[0] * n + p for n, p in zip(pad_counts, prompt_lists)])
    logprobs = torch.zeros(batch, max_new_tokens, device=device)
    # Keys and values as the attention computes them: in the autocast dtype under autocast.
    autocast = torch.is_autocast_enabled(device.type)
    cache_dtype = torch.get_autocast_dtype(device.type) if autocast else model.tok_emb.weight.dtype
    cache = KVCache(model.cfg, batch, device=device, dtype=cache_dtype) if use_cache else None

    head = _output_head(model, cache_dtype if autocast else None)
    capture = GRAPH_CAPTURES.get(device.type) if cuda_graph and cache is not None else None
    graphed, window_start = None, 0
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = 0
    was_training = model.training
    model.eval()
    try:
        while steps < max_new_tokens and not (eos_id is not None and bool(finished.all())):
            end = width + steps
            logits = None
            # Only before the window first slides (the window starts at column 0): one new token per step.
            if cache is not None and 0 < cache.length < model.cfg.context_length:
                if capture is not None:
                    try:
                        graphed = graphed or GraphedDecodeStep(model, cache, head, pad, capture)
                        logits = graphed(token_ids[:, end - 1 : end], cache.length)
                        cache.length += 1
                    except Exception as err:  # whatever it is: the eager step below computes the same
                        _drop_graph_capture(device, err)
                        capture = None
                if logits is None:
                    hidden = model.hidden_states(token_ids[:, end - 1 : end], cache, _window_pad(pad, window_start))
                    logits = head(hidden[:, -1])
            else:
                window_start = max(0, end - model.cfg.context_length)
                if cache is not None:
                    cache.length = 0
                hidden = model.hidden_states(token_ids[:, window_start:end], cache, _window_pad(pad, window_start))
                logits = head(hidden[:, -1])
            new_token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            token_ids[:, end] = new_token[:, 0]
            logprobs[:, steps] = torch.log_softmax(logits, dim=-1).gather(1, new_token)[:, 0]
            if eos_id is not None:
                finished |= new_token[:, 0] == eos_id
            steps += 1
    finally:
        model.train(was_training)

    new_tokens = token_ids[:, width : width + steps].tolist()
    kept = [row.index(eos_id) if eos_id in row else len(row) for row in new_tokens]
    return Generation(
        prompts=prompt_lists,
        new_tokens=[row[:n] for row, n in zip(new_tokens, kept)],
        logprobs=[row[:n] for row, n in zip(logprobs[:, :steps].tolist(), kept)],
    )


def sample_continuations(
    model: GPTModel, prompt: Sequence[int], cfg: DecodingConfig, num_samples: int | None = None
) -> tuple[Generation, float]:
    """`num_samples` (default `cfg.num_samples`) continuations of one prompt with `cfg`'s settings,
    row i drawing from a generator seeded `cfg.seed + i` (one row when greedy: the others would
    repeat it), and the seconds they took."""
    return sample_prompts(model, [prompt], cfg, num_samples=num_samples)


def sample_prompts(
    model: GPTModel, prompts: Sequence[Sequence[int]], cfg: DecodingConfig, *, num_samples: int | None = None,
    batch_size: int | None = None,
) -> tuple[Generation, float]:
    """`sample_continuations` of each prompt, prompt after prompt in one `Generation` (each
    prompt's samples are what it gets alone), decoded `batch_size` rows at a time (default: all
    at once), and the seconds they took."""
    count = 1 if cfg.greedy else num_samples or cfg.num_samples
    device = model.tok_emb.weight.device
    rows = [(list(prompt), cfg.seed + i) for prompt in prompts for i in range(count)]
    step = batch_size or len(rows)
    out = Generation(prompts=[], new_tokens=[], logprobs=[])
    start = time.perf_counter()
    for first in range(0, len(rows), step):
        batch = rows[first : first + step]
        part = generate(model, [prompt for prompt, _ in batch], max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_id=cfg.eos_id,
                        generator=[torch.Generator(device=device).manual_seed(seed) for _, seed in batch])
        out.prompts += part.prompts
        out.new_tokens += part.new_tokens
        out.logprobs += part.logprobs
    return out, time.perf_counter() - start


def _output_head(model: GPTModel, dtype: torch.dtype | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Final-norm outputs [batch, emb_dim] -> fp32 logits over the vocabulary (no padding rows,
    soft-capped if the model caps them), the head's weight laid out once for all steps (and cast
    to ``dtype`` under autocast)."""
    if isinstance(model.out_head, PackedLinear):  # already holds just the vocabulary rows, laid out
        return lambda hidden: model.soft_cap(model.out_head(hidden))
    head_t = model.out_head.weight[: model.cfg.vocab_size].t().contiguous()  # [emb_dim, vocab_size]
    if dtype is not None:
        head_t = head_t.to(dtype)
    return lambda hidden: model.soft_cap((hidden @ head_t).float())


def _window_pad(pad: torch.Tensor | None, window_start: int) -> torch.Tensor | None:
    """Left-padding tokens still inside a window that starts at column ``window_start``."""
    return None if pad is None else (pad - window_start).clamp(min=0)


def capture_cuda_graph(step: Step, device: torch.device) -> Step:
    """Capture ``step`` as a CUDA graph on ``device``; returns its replay, which gives the output
    tensor the capture allocated (each replay rewrites it)."""
    with torch.cuda.device(device):
        # Warm up on a side stream (CUDA libraries initialise lazily), as capturing requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


# The device types whose cached decoding steps replay a captured graph, and how each captures
# one. ``generate`` drops a device's entry when its capture or a replay raises.
GRAPH_CAPTURES: dict[str, Callable[[Step, torch.device], Step]] = {"cuda": capture_cuda_graph}


def _drop_graph_capture(device: torch.device, err: Exception) -> None:
    """Decode without graphs on ``device`` from now on, and say why (once: the entry is gone)."""
    GRAPH_CAPTURES.pop(device.type, None)
    log.warning("%s graph decoding failed (%s: %s); decoding without it from here on: the same tokens, more slowly",
                device.type.upper(), type(err).__name__, err)


class GraphedDecodeStep:
    """One cached decoding step (the newest token in, next-token logits out) captured once as a
    graph and replayed for every later token, as gpt-fast does with
    ``torch.compile(mode="reduce-overhead")`` but without its compile time.

    The captured step is fixed-shape (``GPTModel.decode_hidden``: every layer attends over the
    whole cache, masked by position) and reads static input buffers; a call copies the token and
    the cache position into them and replays it. ``capture(step, device)`` returns the replay
    (``capture_cuda_graph`` on CUDA). Under autocast its warm-up step fills autocast's
    weight-cast cache, so the graph reads the cast weights (alive until the caller's autocast
    block ends, after ``generate`` returns) instead of casting them again at every token; the
    warm-up writes the cache at the first decoding position, which the first replay rewrites.
    """

    def __init__(self, model: GPTModel, cache: KVCache, head: Callable[[torch.Tensor], torch.Tensor],
                 pad: torch.Tensor | None, capture: Callable[[Step, torch.device], Step]):
        batch, device = cache.kv.size(2), cache.kv.device
        # Every tensor the graph reads must outlive it, at the same address: hence attributes.
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.full((), cache.length, dtype=torch.long, device=device)
        self.pad = torch.zeros(batch, dtype=torch.long, device=device) if pad is None else pad.clone()
        self.cache, self.head = cache, head  # the head holds its laid-out weight

        def step() -> torch.Tensor:
            return self.head(model.decode_hidden(self.token, self.slot, self.cache, self.pad)[:, -1])

        self.replay = capture(step, device)

    def __call__(self, token: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits [batch, vocab] after ``token`` [batch, 1] at cache position ``slot``."""
        self.token.copy_(token)
        self.slot.fill_(slot)
        return self.replay()
