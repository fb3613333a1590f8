"""``python -m gpt2exp.export ... push_to_hub=<repo>`` against a Hugging Face hub on this machine
(HF_ENDPOINT): the exported folder, its model card included, lands in the repo; offline, one
line and the folder kept."""

import json


def test_export_pushes_the_folder_with_its_model_card(run_module, train_run, upload_hub, tmp_path):
    hub, url = upload_hub
    result = run_module("gpt2exp.export", f"ckpt={train_run}", f"out={tmp_path / 'hf'}", "push_to_hub=me/tiny-gpt2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"pushed {tmp_path / 'hf'} to {url}/me/tiny-gpt2"
    uploaded = hub.repos["me/tiny-gpt2"]
    assert uploaded == {path.name: path.read_bytes() for path in (tmp_path / "hf").iterdir()}
    card = uploaded["README.md"].decode()
    summary = json.loads((train_run / "summary.json").read_text())
    assert f"| final val loss | {summary['final/val_loss']:.4g} |" in card and "| steps | 4 |" in card
    assert 'GPT2LMHeadModel.from_pretrained("me/tiny-gpt2")' in card


def test_an_offline_push_is_one_line_and_keeps_the_export(run_module, train_run, upload_hub, tmp_path, monkeypatch):
    hub, _ = upload_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    result = run_module("gpt2exp.export", f"ckpt={train_run}", f"out={out}", "push_to_hub=me/tiny-gpt2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: push_to_hub=me/tiny-gpt2: offline (HF_HUB_OFFLINE is set); the export is in {out}; upload it later "
        f"with: hf upload me/tiny-gpt2 {out} ."]
    assert {"README.md", "config.json", "model.safetensors"} <= {path.name for path in out.iterdir()}
    assert hub.asked == []
