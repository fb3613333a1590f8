"""`model.init` weights reach training: a fine-tune from an HF folder starts at that model's own
loss, as transformers computes it, not at a fresh model's."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLE_TEXT, read_jsonl, run_folders
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2exp.config import DataConfig
from gpt2exp.data import build_data, eval_batches
from gpt2exp.tokenizer import get_encoding

CONTEXT, BATCH, EVAL_ITER = 64, 4, 5


HF_TINY = {"vocab_size": 50257, "n_positions": CONTEXT, "n_embd": 32, "n_layer": 2, "n_head": 4}


def pretrained_hf_model(text: str, steps: int = 40) -> GPT2LMHeadModel:
    """A tiny GPT-2 that transformers trained for a few steps on `text`: its loss is far below a
    fresh model's (ln 50257 = 10.8)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_TINY))
    tokens = torch.tensor(get_encoding().encode(text))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - CONTEXT, (BATCH,))
        windows = torch.stack([tokens[start : start + CONTEXT] for start in starts])
        optimizer.zero_grad()
        model(windows, labels=windows).loss.backward()
        optimizer.step()
    return model.eval()


def test_a_fine_tune_starts_at_the_hf_models_own_val_loss(run_module, text_file, tmp_path):
    hf_model = pretrained_hf_model(SAMPLE_TEXT)
    hf_model.save_pretrained(tmp_path / "hf")
    result = run_module("gpt2exp.train", f"model.init={tmp_path / 'hf'}", f"model.context_length={CONTEXT}",
                        "data=text", f"data.path={text_file}", f"data.batch_size={BATCH}", f"data.stride={CONTEXT}",
                        f"trainer.eval_iter={EVAL_ITER}", "trainer.max_steps=1", "trainer.precision=fp32",
                        "trainer.progress=false", "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    first_val_loss = next(m["val/loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if m["step"] == 0)

    data = build_data(DataConfig(source="text", path=str(text_file), train_ratio=0.8, batch_size=BATCH,
                                 stride=CONTEXT), context_length=CONTEXT)
    batches = eval_batches(data.val_loader.dataset, num_batches=EVAL_ITER, batch_size=BATCH)
    with torch.no_grad():
        losses = [F.cross_entropy(hf_model(inputs).logits.flatten(0, 1), targets.flatten()).item()
                  for inputs, targets in batches]
    hf_val_loss = sum(losses) / len(losses)
    assert hf_val_loss < math.log(50257) - 3  # the model learned: a fresh init's loss would be ~10.8
    assert first_val_loss == pytest.approx(hf_val_loss, abs=1e-4)
