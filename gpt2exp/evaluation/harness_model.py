"""gpt2exp's model behind lm-evaluation-harness's ``LM`` interface, scored with its own forward.

Multiple-choice requests share their context: it runs once, its keys and values go to a
``KVCache``, and the choices run as one batch over it (the contexts of several questions
left-padded into one batch). The output head (a third of a small
model's work per token) runs on the continuation's positions only. Requests of their own (rolling
windows) run as right-padded batches of similar lengths. The harness's request order, few-shot
sampling and metrics are its own; only the scoring is gpt2exp's. Imports lm_eval (the ``tasks``
extra): callers import this module where they need it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gpt2exp.devices import FP32, Precision
from gpt2exp.errors import UserError
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.model import GPTModel, KVCache
from gpt2exp.tokenizer import EOT_ID, EOT_TOKEN, get_encoding

Request = tuple[tuple[str, str], list[int], list[int]]  # (strings, context tokens, continuation tokens)
DEFAULT_GEN_TOKENS = 256  # new tokens of a generate_until request that does not say (the harness's default)


class GPT2ExpLM(TemplateLM):
    """``model`` (in eval mode, on its device) scored for the harness, `batch_size` rows at a time."""

    def __init__(self, model: GPTModel, *, batch_size: int = 4, precision: Precision = FP32):
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self.precision = precision
        self.max_length = model.cfg.context_length
        self.encoding = get_encoding()

    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.encoding.encode(string, allowed_special="all")

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    def _hidden(self, token_ids: torch.Tensor, cache: KVCache | None = None,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        with self.precision.autocast():
            return self.model.hidden_states(token_ids.to(self.device), cache, pad)

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, emb_dim] final-norm outputs -> [n, vocab_size] fp32 log-probabilities."""
        with self.precision.autocast():
            logits = self.model.out_head(hidden)[:, : self.model.cfg.vocab_size]
        return F.log_softmax(self.model.soft_cap(logits.float()), dim=-1)

    @staticmethod
    def _score(log_probs: torch.Tensor, targets: list[int]) -> tuple[float, bool]:
        """Summed log-probability of `targets` under [len(targets), vocab] rows, and whether each is the argmax."""
        target = torch.tensor(targets, device=log_probs.device)
        greedy = bool((log_probs.argmax(dim=-1) == target).all())
        return float(log_probs.gather(1, target[:, None]).sum()), greedy

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each continuation after its context; a pair longer than the
        context window loses tokens from the left, as the harness's HFLM does."""
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)  # shared prefix -> request indices
        for index, (_, context, continuation) in enumerate(requests):
            if len(continuation) > self.max_length:
                raise UserError(f"a task's answer of {len(continuation)} tokens is longer than the model's context "
                                f"({self.max_length} tokens): it cannot be scored")
            whole = (context + continuation)[-(self.max_length + 1):]
            groups[tuple(whole[: len(whole) - len(continuation)])].append(index)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        shared = [(prefix, members[first : first + self.batch_size]) for prefix, members in groups.items()
                  if len(members) > 1 for first in range(0, len(members), self.batch_size)]  # batch_size rows at most
        shared.sort(key=lambda group: -len(group[0]))  # similar prefix lengths together: less padding
        batch: list[tuple[tuple[int, ...], list[int]]] = []
        for group in [*shared, None]:  # groups of choices, batch_size rows at a time
            if batch and (group is None or not self._fits(batch + [group], requests)):
                scores = self._shared_prefixes([(prefix, [requests[i][2] for i in members]) for prefix, members in batch])
                for index, result in zip([i for _, members in batch for i in members], scores):
                    results[index] = result
                batch = []
            if group is not None:
                batch.append(group)
        singles = [members[0] for members in groups.values() if len(members) == 1]
        singles.sort(key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for first in range(0, len(singles), self.batch_size):
            batch_ids = singles[first : first + self.batch_size]
            for index, result in zip(batch_ids, self._independent([requests[i][1:] for i in batch_ids])):
                results[index] = result
        return results

    def _fits(self, batch: list[tuple[tuple[int, ...], list[int]]], requests: list[Request]) -> bool:
        """Whether groups of choices fit one batch: `batch_size` rows, and the widest prefix plus
        the widest continuation within the context."""
        rows = sum(len(members) for _, members in batch)
        widest = max(len(requests[i][2]) for _, members in batch for i in members) - 1
        return rows <= self.batch_size and max(len(prefix) for prefix, _ in batch) + widest <= self.max_length

    def _shared_prefixes(self, groups: list[tuple[tuple[int, ...], list[list[int]]]]) -> list[tuple[float, bool]]:
        """Each group's prefix once (left-padded to one width) into a cache, then every group's
        continuations (but their last token) as one batch over its prefix's cached rows."""
        width = max(len(prefix) for prefix, _ in groups)
        widest = max(len(c) for _, continuations in groups for c in continuations) - 1
        pad = torch.tensor([width - len(prefix) for prefix, _ in groups], device=self.device)
        cache = KVCache(dataclasses.replace(self.model.cfg, context_length=width + max(widest, 1)), len(groups),
                        device=self.device, dtype=self._cache_dtype())
        prefixes = torch.tensor([[EOT_ID] * (width - len(prefix)) + list(prefix) for prefix, _ in groups])
        last = self._log_probs(self._hidden(prefixes, cache, pad)[:, -1])  # [groups, vocab]
        owners = [g for g, (_, continuations) in enumerate(groups) for _ in continuations]
        continuations = [c for _, group in groups for c in group]
        if widest == 0:
            return [self._score(last[g : g + 1], c) for g, c in zip(owners, continuations)]
        owner_rows = torch.tensor(owners, device=self.device)
        cache.kv = cache.kv.index_select(2, owner_rows)  # each continuation's row: its prefix's keys and values
        rows = torch.tensor([c[:-1] + [EOT_ID] * (widest - len(c) + 1) for c in continuations])
        hidden = self._hidden(rows, cache, pad[owner_rows])  # [continuations, widest, emb_dim]; right padding unread
        return [self._score(torch.cat([last[g : g + 1], self._log_probs(hidden[row, : len(c) - 1])]), c)
                for row, (g, c) in enumerate(zip(owners, continuations))]

    def _independent(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Each (context, continuation) as its own right-padded row of one batch."""
        inputs = [(c + t)[-(self.max_length + 1):][:-1] for c, t in pairs]
        width = max(len(row) for row in inputs)
        hidden = self._hidden(torch.tensor([row + [EOT_ID] * (width - len(row)) for row in inputs]))
        return [self._score(self._log_probs(hidden[row, len(tokens) - len(t) : len(tokens)]), t)
                for row, (tokens, (_, t)) in enumerate(zip(inputs, pairs))]

    def _cache_dtype(self) -> torch.dtype:
        """Keys and values as the attention computes them: in the autocast dtype under autocast."""
        return self.model.tok_emb.weight.dtype if self.precision.name == "fp32" else self.precision.dtype

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-probability in disjoint windows of the context length (the harness's rule)."""
        windows, owners = [], []
        for owner, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=EOT_ID, max_seq_len=self.max_length, context_len=1)):
                windows.append((("", ""), context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (log_prob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += log_prob
        return totals

    @torch.inference_mode()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first of the request's stop strings."""
        answers = []
        for context, gen_kwargs in (request.args for request in requests):
            settings = normalize_gen_kwargs(gen_kwargs, DEFAULT_GEN_TOKENS)  # max_new_tokens etc., as HFLM reads them
            until, new_tokens = settings["until"], settings["max_gen_toks"]
            if new_tokens >= self.max_length:
                raise UserError(f"a task asks for {new_tokens} new tokens (max_gen_toks), not fewer than the model's "
                                f"context ({self.max_length} tokens): no room is left for its prompt")
            prompt = self.tok_encode(context)[-(self.max_length - new_tokens):]
            with self.precision.autocast():
                out = generate(self.model, [prompt], max_new_tokens=new_tokens, eos_id=EOT_ID)
            text = self.encoding.decode(out.new_tokens[0])
            for stop in [*until, EOT_TOKEN]:
                text = text.split(stop)[0] if stop else text  # an empty stop string stops nothing (as in HFLM)
            answers.append(text)
        return answers
