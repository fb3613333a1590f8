"""`experiment=article` reproduces the tutorial's training curve: the model memorises its training
text (train loss far below 1 by epoch 10) while the val loss bottoms out early and climbs.

Outside CI (about 22 minutes on 2 CPU cores): ``pytest --run-tutorial tests/e2e/test_tutorial_curve.py``.
The text is the first 90,000 characters of WikiText-2's validation split (a different article
from the tutorial's, of the same length).
"""

from pathlib import Path

import pytest
from helpers import read_jsonl

WIKITEXT_VALID = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"

pytestmark = pytest.mark.tutorial


def test_article_preset_memorises_the_text_while_the_val_loss_turns(run_module, tmp_path):
    article = tmp_path / "article.txt"
    article.write_text(WIKITEXT_VALID.read_text(encoding="utf-8")[:90_000], encoding="utf-8")
    result = run_module("gpt2exp.train", "experiment=article", f"data.path={article}", "logger=none",
                        "trainer.progress=false", "hydra.run.dir=run", timeout=4 * 3600)
    assert result.returncode == 0, result.stderr
    evals = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val/loss" in m]
    first, final = evals[1], evals[-1]  # evals[0] is the untrained model's
    best = min(evals, key=lambda m: m["val/loss"])
    assert 7 <= first["train/loss"] <= 9 and 7 <= first["val/loss"] <= 9
    assert final["epoch"] == pytest.approx(10) and final["train/loss"] < 1
    assert best["epoch"] <= 5
    assert final["val/loss"] >= best["val/loss"] + 0.3
