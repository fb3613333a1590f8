"""The Hugging Face bridge: start training from an HF-format GPT-2 folder (``model.init``) and
export a checkpoint that ``transformers`` loads (``python -m gpt2exp.export``), both offline."""
import json
import os
import time

import huggingface_hub.constants
import pytest
import torch
from helpers import TINY_MODEL
from helpers.hf_bridge import HF_TINY, save_hf_folder, tiny_checkpoint
from transformers import GPT2LMHeadModel

from gpt2exp.cli.export import export
from gpt2exp.config import ModelConfig, plain
from gpt2exp.errors import UserError
from gpt2exp.modeling import hf_format
from gpt2exp.modeling.checkpoint import save_checkpoint
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.hf_format import find_hf_folder, read_hf_folder
from gpt2exp.modeling.model import GPTModel
from gpt2exp.modeling.trained import load_trained_model


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
    save_checkpoint(tmp_path / "model.pt", model=model.state_dict(), optimizer=None, step=1, config={"model": plain(cfg)})
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


def cache_snapshot(cache, repo: str, commit: str, **files: str):
    """A snapshot of `repo` in a Hugging Face hub cache, laid out as huggingface_hub lays it out."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_model_init_gpt2_is_the_snapshot_the_caches_main_names(tmp_path, monkeypatch):
    """huggingface_hub's look-up: the snapshot refs/main points at, not the newest folder."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    main = cache_snapshot(tmp_path, "openai-community/gpt2", "a" * 40, **{"config.json": "{}"})
    newer = cache_snapshot(tmp_path, "openai-community/gpt2", "b" * 40, **{"config.json": "{}"})  # not main
    os.utime(newer / "config.json", (time.time() + 100, time.time() + 100))
    (tmp_path / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "models--openai-community--gpt2" / "refs" / "main").write_text("a" * 40)
    assert find_hf_folder("gpt2") == main


def test_model_init_gpt2_outside_the_cache_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port
    with pytest.raises(UserError) as error:
        find_hf_folder("gpt2-medium")
    message = str(error.value)
    assert message.startswith(f"model.init=gpt2-medium: not in the Hugging Face cache ({tmp_path / 'hub'}) and no "
                              f"answer from {huggingface_hub.constants.ENDPOINT} (")
    assert "hf download openai-community/gpt2-medium config.json model.safetensors" in message
    assert "https://huggingface.co/openai-community/gpt2-medium" in message and "model.init=<folder>" in message


def test_model_init_gpt2_offline_asks_no_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_format, "unreachable", lambda *args: pytest.fail("the hub was asked"))
    with pytest.raises(UserError, match=r"model.init=gpt2: not in the Hugging Face cache \(.*\) and HF_HUB_OFFLINE is "
                                        "set; put it there with `hf download openai-community/gpt2 "):
        find_hf_folder("gpt2")


def test_model_init_that_names_no_model_folder_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"model.init={tmp_path / 'empty'}: the folder .* holds no config.json"):
        find_hf_folder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="model.init=hf/gpt2: no such folder, and it is not one of gpt2, gpt2-medium"):
        find_hf_folder("hf/gpt2")


def test_an_hf_folder_without_weights_says_which_file_to_put_there(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = cache_snapshot(tmp_path, "gpt2", "c" * 40, **{"config.json": json.dumps(HF_TINY)})
    (tmp_path / "models--gpt2" / "refs").mkdir()
    (tmp_path / "models--gpt2" / "refs" / "main").write_text("c" * 40)
    with pytest.raises(UserError) as error:
        read_hf_folder(find_hf_folder("gpt2"))
    assert str(error.value) == (f"model.init: {snapshot} holds config.json but neither model.safetensors nor "
                                "pytorch_model.bin; put the weights saved with that config.json there (transformers' "
                                "save_pretrained and `hf download <repo> model.safetensors` write model.safetensors)")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_an_exported_folder_has_the_modes_a_plain_write_gives(tmp_path, umask):
    """model.safetensors included: safetensors makes its files private to their owner."""
    tiny_checkpoint(tmp_path / "model.pt")
    before = os.umask(umask)
    try:
        out = export(str(tmp_path / "model.pt"), str(tmp_path / "hf"))
    finally:
        os.umask(before)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {oct(0o666 & ~umask)}, modes
