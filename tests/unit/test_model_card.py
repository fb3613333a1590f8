"""`python -m gpt2exp.export`'s model card (README.md: how the model was trained, its eval
scores, limitations, license) and `push_to_hub` against a hub on this machine (HF_ENDPOINT)."""

import json

import huggingface_hub.constants
import pytest
import torch
from helpers import TINY_MODEL

from gpt2exp.cli.export import export, push_to_hub
from gpt2exp.config import ExportConfig, ModelConfig, TrainConfig, plain
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import save_checkpoint
from gpt2exp.modeling.model import GPTModel

SUMMARY = {"final/train_loss": 4.25, "final/val_loss": 5.125, "final/val_perplexity": 168.2, "best/val_loss": 5.0,
           "steps": 40, "tokens_seen": 5120, "test/perplexity": 170.5}
EVAL = {"split": "test", "tokens": 9000, "mean_nll": 5.2, "perplexity": 181.3, "stride": 32, "context_length": 32}


@pytest.fixture
def run_dir(tmp_path):
    """A training run's folder: its last checkpoint (the tiny model, a WikiText-2 config) and summary.json."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(**TINY_MODEL))
    cfg.data.source, cfg.data.name, cfg.seed = "wikitext", "wikitext-2-raw-v1", 7
    run = tmp_path / "outputs" / "2026-12-07" / "10-00-00"
    save_checkpoint(run / "checkpoints" / "last.pt", model=GPTModel(cfg.model).state_dict(), optimizer=None, step=40,
                    config=plain(cfg), extra={"train_state": {"tokens_seen": 5120}})
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    return run


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "outputs" / "2026-12-07" / "11-00-00"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(EVAL))
    return folder


def test_an_export_holds_a_model_card_of_how_it_was_trained_and_scored(run_dir, eval_dir, tmp_path):
    out = export(str(run_dir), str(tmp_path / "hf"), name="me/tiny-gpt2", eval_runs=[str(eval_dir)],
                 license_id="apache-2.0")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "# me/tiny-gpt2" in card and 'GPT2LMHeadModel.from_pretrained("me/tiny-gpt2")' in card
    parameters = GPTModel(ModelConfig(**TINY_MODEL)).num_parameters()
    assert f"({parameters:,} parameters; n_layers=1, n_heads=2, emb_dim=32, context_length=32)" in card
    for row in ("| data | WikiText (`wikitext-2-raw-v1`) |", "| steps | 40 |", "| tokens seen | 5,120 |",
                "| seed | 7 |", "| final train loss | 4.25 |", "| final val loss | 5.125 |",
                "| best val loss | 5 |", "| test perplexity | 170.5 |", "| optimizer | adamw, lr 0.001, cosine"):
        assert row in card, row
    assert f"From `{eval_dir}`:" in card and "| perplexity | 181.3 |" in card and "| split | test |" in card
    assert "## Limitations" in card and "## License\n\napache-2.0" in card


def test_a_checkpoint_outside_a_run_folder_gets_a_card_without_losses(run_dir, tmp_path):
    loose = tmp_path / "model.pt"
    (run_dir / "checkpoints" / "last.pt").rename(loose)
    card = (export(str(loose), str(tmp_path / "hf")) / "README.md").read_text()
    assert "# hf" in card and "| steps | 40 |" in card and "final val loss" not in card and "## Evaluation" not in card


def test_an_eval_run_without_eval_json_stops_the_export_before_anything_is_written(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=rf"^eval_runs: cannot read '{tmp_path / 'empty' / 'eval.json'}' \(No such"):
        export(str(run_dir), str(tmp_path / "hf"), eval_runs=[str(tmp_path / "empty")])
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("repo", ["tiny", "me/tiny/extra", "me/ti ny", "/tiny"])
def test_push_to_hub_must_be_a_repo_id(repo):
    with pytest.raises(UserError, match=rf"^push_to_hub='{repo}' is not allowed: a Hugging Face repo id"):
        ExportConfig(ckpt="x.pt", out="hf", push_to_hub=repo)


@pytest.fixture
def exported(run_dir, tmp_path):
    return export(str(run_dir), str(tmp_path / "hf"), name="me/tiny-gpt2")


def test_push_uploads_the_exported_folder_in_one_commit(upload_hub, exported):
    hub, url = upload_hub
    assert push_to_hub(exported, "me/tiny-gpt2") == f"{url}/me/tiny-gpt2"
    assert hub.repos["me/tiny-gpt2"] == {path.name: path.read_bytes() for path in exported.iterdir()}
    assert {"README.md", "config.json", "model.safetensors"} <= set(hub.repos["me/tiny-gpt2"])


def later(folder) -> str:
    return f"; the export is in {folder}; upload it later with: hf upload me/tiny-gpt2 {folder} ."


@pytest.mark.parametrize("how", ["offline", "no token", "no answer", "refused"])
def test_a_push_that_cannot_happen_is_one_line_and_the_export_stays(upload_hub, exported, monkeypatch, how):
    hub, _ = upload_hub
    files = {path.name: path.read_bytes() for path in exported.iterdir()}
    expected = {"offline": "offline (HF_HUB_OFFLINE is set)",
                "no token": "no Hugging Face token (run hf auth login, or set HF_TOKEN)",
                "no answer": "no answer from http://127.0.0.1:9 (",
                "refused": "the hub answered 403 to POST /api/repos/create (You don't have the rights to "
                            "create a model under this namespace)"}[how]
    if how == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    elif how == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setenv("HF_HOME", str(exported.parent / "hf-home"))  # no token stored there either
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(exported.parent / "hf-home" / "token"))
    elif how == "no answer":
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    else:
        hub.refuse = True
    with pytest.raises(UserError) as error:
        push_to_hub(exported, "me/tiny-gpt2")
    message = str(error.value)
    assert message.startswith(f"push_to_hub=me/tiny-gpt2: {expected}") and message.endswith(later(exported))
    assert "\n" not in message
    assert {path.name: path.read_bytes() for path in exported.iterdir()} == files
    assert hub.repos == {}
