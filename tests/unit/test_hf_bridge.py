"""The Hugging Face bridge: start training from an HF-format GPT-2 folder (``model.init``) and
export a checkpoint that ``transformers`` loads (``python -m gpt2exp.export``), both offline."""
import json
from dataclasses import asdict

import pytest
import torch
from helpers import TINY_MODEL
from helpers.hf_bridge import HF_TINY, save_hf_folder, tiny_checkpoint
from transformers import GPT2LMHeadModel

from gpt2exp.cli.export import export
from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import load_trained_model, save_checkpoint
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.hf_format import read_hf_folder
from gpt2exp.modeling.model import GPTModel


def loaded(folder) -> GPTModel:
    """gpt2exp's model of the Hugging Face folder, with its weights, in eval mode."""
    model_cfg, weights = read_hf_folder(folder, drop_rate=0.0)
    model = GPTModel(model_cfg).eval()
    model.load_state_dict(weights)
    return model


def test_an_hf_folder_loads_with_the_same_logits_and_greedy_tokens(hf_folder):
    folder, hf_model = hf_folder
    model = loaded(folder)
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-5, rtol=1e-5)
        ours = generate(model, tokens[:1, :5], max_new_tokens=10).new_tokens[0]
        theirs = hf_model.generate(tokens[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)[0, 5:]
    assert ours == theirs.tolist()


def test_a_misshapen_weight_is_named(hf_folder):
    folder, _ = hf_folder
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 64, "n_head": 4}))
    with pytest.raises(UserError, match=r"model.init: .* 'wte.weight' has shape \(50257, 32\), the architecture"):
        read_hf_folder(folder)


EXPORT_VARIANTS = {"untied head": {"tie_embeddings": False}, "padded vocabulary": {"pad_vocab_to": 64},
                   "both": {"tie_embeddings": False, "pad_vocab_to": 64}}


@pytest.mark.parametrize("variant", EXPORT_VARIANTS.values(), ids=EXPORT_VARIANTS)
def test_export_of_an_untied_or_padded_model_gives_transformers_the_same_logits(variant, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL | variant)
    model = GPTModel(cfg).eval()
    if "pad_vocab_to" in variant:
        assert model.tok_emb.weight.shape[0] == 50304  # 47 rows the export must leave out
    save_checkpoint(tmp_path / "model.pt", model=model.state_dict(), optimizer=None, step=1, config={"model": asdict(cfg)})
    hf_model = GPT2LMHeadModel.from_pretrained(export(str(tmp_path / "model.pt"), str(tmp_path / "hf"))).eval()
    assert hf_model.config.tie_word_embeddings == cfg.tie_embeddings
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change", [
    {"scale_attn_weights": False}, {"scale_attn_by_inverse_layer_idx": True}, {"reorder_and_upcast_attn": True},
    {"model_type": "gpt_neo"}, {"n_inner": 48}, {"activation_function": "relu"}, {"n_embd": "32"}, {"n_head": 4.0},
    {"n_layer": True}, {"n_positions": None}, {"resid_pdrop": "0.1"}, {"layer_norm_epsilon": [1e-5]},
    {"tie_word_embeddings": 1},
])
def test_a_config_json_key_gpt2exp_cannot_follow_is_refused_by_name(change, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_TINY | change))
    [key] = change
    with pytest.raises(UserError, match=rf"^model.init: {tmp_path / 'config.json'} has {key}="):
        read_hf_folder(tmp_path)


def test_what_transformers_writes_for_gpt2_loads(tmp_path):
    save_hf_folder(tmp_path, n_inner=4 * HF_TINY["n_embd"], activation_function="gelu_pytorch_tanh")
    assert read_hf_folder(tmp_path)[0].emb_dim == HF_TINY["n_embd"]


def test_a_config_json_that_is_no_object_is_named(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="config.json holds no JSON object"):
        read_hf_folder(tmp_path)


@pytest.mark.parametrize("content", [[torch.zeros(2)], {1: torch.zeros(2)}, {"wte.weight": [0.0]}])
def test_a_bin_file_that_holds_no_state_dict_is_named(content, tmp_path):
    save_hf_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(content, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin holds no state dict of tensors"):
        read_hf_folder(tmp_path)


def test_an_hf_folder_with_another_layer_norm_epsilon_has_transformers_logits(tmp_path):
    hf_model = save_hf_folder(tmp_path, layer_norm_epsilon=0.1, initializer_range=0.2)
    model = loaded(tmp_path)
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-5, rtol=1e-5)


def test_export_writes_the_layer_norm_epsilon_back(tmp_path):
    tiny_checkpoint(tmp_path / "model.pt", layer_norm_epsilon=0.1)
    hf_model = GPT2LMHeadModel.from_pretrained(export(str(tmp_path / "model.pt"), str(tmp_path / "hf"))).eval()
    model, _ = load_trained_model(tmp_path / "model.pt")
    ids = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model.eval()(ids), atol=1e-5, rtol=1e-5)
    assert hf_model.config.layer_norm_epsilon == 0.1
