"""``python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>``: a trained
model as a Hugging Face folder that ``transformers`` loads offline (``GPT2LMHeadModel`` and
``AutoTokenizer.from_pretrained(out)``), to push to the hub or serve with any transformers tool.

A LoRA run's model is exported merged (its base plus the adapters' product); ``merge_lora=false``
writes ``out/base`` (the base, as above) and ``out/adapter`` (a folder that
``peft.PeftModel.from_pretrained`` loads on it).

The folder holds a model card (README.md: how the model was trained, its `eval_runs` scores,
its limitations and `license`); ``push_to_hub=<user>/<name>`` uploads the folder to that Hugging
Face repo (made if new) through huggingface_hub."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import ExportConfig
from gpt2exp.errors import UserError
from gpt2exp.network import unreachable
from gpt2exp.runs.layout import checkpoint_file
from gpt2exp.runs.model_card import model_card, read_evals, run_summary

USAGE = ("usage: python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder> [merge_lora=true|false] "
         "[push_to_hub=<user>/<name>]")
CONNECT_TIMEOUT_S = 5.0


def export(ckpt: str, out: str, merge_lora: bool = True, *, name: str | None = None,
           eval_runs: list[str] | tuple[str, ...] = (), license_id: str = "mit") -> Path:
    """Write the checkpoint's model into `out` (a new or empty folder, whole or not at all) with
    its model card, titled `name` (the repo id it is pushed to; by default the folder's name);
    returns the folder."""
    from gpt2exp.modeling.hf_format import write_hf_folder
    from gpt2exp.modeling.lora import is_lora, write_base_and_adapter
    from gpt2exp.modeling.trained import load_trained_model

    out_dir = Path(out).expanduser()
    ckpt_path = checkpoint_file(ckpt)
    evals = read_evals(list(eval_runs), "eval_runs")
    model, checkpoint = load_trained_model(ckpt_path, merge_lora=merge_lora)
    if not merge_lora and not is_lora(model):
        raise UserError(f"merge_lora=false: ckpt '{ckpt}' is not a LoRA run's (model.lora.rank is 0); leave it out")
    card = model_card(name=name or out_dir.resolve().name, checkpoint=checkpoint, parameters=model.num_parameters(),
                      summary=run_summary(ckpt_path), evals=evals, license_id=license_id,
                      layout="merged" if merge_lora else "adapter")
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise UserError(f"out: '{out}' exists and is not an empty folder; name a new one")
        if merge_lora:
            return write_hf_folder(model, out_dir, readme=card)
        return write_base_and_adapter(model, out_dir, readme=card)
    except OSError as err:
        where = f" at '{err.filename}'" if err.filename else ""
        raise UserError(f"out: cannot write '{out}' ({err.strerror or err}{where})") from None


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the Hugging Face model repo `repo_id` (made if new) in one commit;
    returns the repo's address. Offline, without a token or when the hub refuses, a UserError
    that says how to upload the folder, which stays, later."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    later = f"the export is in {folder}; upload it later with: hf upload {repo_id} {folder} ."
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UserError(f"push_to_hub={repo_id}: offline (HF_HUB_OFFLINE is set); {later}")
    if huggingface_hub.get_token() is None:
        raise UserError(f"push_to_hub={repo_id}: no Hugging Face token (run hf auth login, or set HF_TOKEN); {later}")
    problem = unreachable(huggingface_hub.constants.ENDPOINT, CONNECT_TIMEOUT_S)
    if problem:
        raise UserError(f"push_to_hub={repo_id}: {problem}; {later}")
    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload a gpt2exp export")
    except HfHubHTTPError as err:
        answer = err.response
        why = err.server_message or answer.reason_phrase
        raise UserError(f"push_to_hub={repo_id}: the hub answered {answer.status_code} to {answer.request.method} "
                        f"{answer.request.url.path} ({' '.join(why.split())}); {later}") from None
    except (OSError, ValueError, httpx.HTTPError) as err:
        raise UserError(f"push_to_hub={repo_id}: {cli.one_line(err)}; {later}") from None
    return str(url)


def _run(composed: DictConfig) -> None:
    missing = [key for key in ("ckpt", "out") if OmegaConf.is_missing(composed, key)]
    if missing:
        raise UserError(f"{USAGE} ({' and '.join(missing)} missing)")
    cfg = cli.typed(composed, ExportConfig)
    folder = export(cfg.ckpt, cfg.out, merge_lora=cfg.merge_lora, name=cfg.push_to_hub, eval_runs=cfg.eval_runs,
                    license_id=cfg.license)
    written = "config.json, model.safetensors, tokenizer files" if cfg.merge_lora else (
        "base/: the base as a Hugging Face folder, adapter/: its PEFT LoRA adapter")
    print(f"wrote {folder} ({written}, README.md: the model card)")
    if cfg.push_to_hub:
        print(f"pushed {folder} to {push_to_hub(folder, cfg.push_to_hub)}")


main = cli.hydra_command("export", _run)


if __name__ == "__main__":
    main()
