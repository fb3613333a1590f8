"""``python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>``: a trained
model as a Hugging Face folder that ``transformers`` loads offline (``GPT2LMHeadModel`` and
``AutoTokenizer.from_pretrained(out)``), to push to the hub or serve with any transformers tool.

A LoRA run's model is exported merged (its base plus the adapters' product); ``merge_lora=false``
writes ``out/base`` (the base, as above) and ``out/adapter`` (a folder that
``peft.PeftModel.from_pretrained`` loads on it)."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import ExportConfig
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import checkpoint_file

USAGE = "usage: python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder> [merge_lora=true|false]"


def export(ckpt: str, out: str, merge_lora: bool = True) -> Path:
    """Write the checkpoint's model into `out` (a new or empty folder, whole or not at all); returns it."""
    from gpt2exp.modeling.hf_format import write_hf_folder
    from gpt2exp.modeling.lora import is_lora, write_base_and_adapter
    from gpt2exp.modeling.trained import load_trained_model

    out_dir = Path(out).expanduser()
    model, _ = load_trained_model(checkpoint_file(ckpt), merge_lora=merge_lora)
    if not merge_lora and not is_lora(model):
        raise UserError(f"merge_lora=false: ckpt '{ckpt}' is not a LoRA run's (model.lora.rank is 0); leave it out")
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise UserError(f"out: '{out}' exists and is not an empty folder; name a new one")
        return write_hf_folder(model, out_dir) if merge_lora else write_base_and_adapter(model, out_dir)
    except OSError as err:
        where = f" at '{err.filename}'" if err.filename else ""
        raise UserError(f"out: cannot write '{out}' ({err.strerror or err}{where})") from None


def _run(composed: DictConfig) -> None:
    missing = [key for key in ("ckpt", "out") if OmegaConf.is_missing(composed, key)]
    if missing:
        raise UserError(f"{USAGE} ({' and '.join(missing)} missing)")
    cfg = cli.typed(composed, ExportConfig)
    folder = export(cfg.ckpt, cfg.out, merge_lora=cfg.merge_lora)
    written = "config.json, model.safetensors, tokenizer files" if cfg.merge_lora else (
        "base/: the base as a Hugging Face folder, adapter/: its PEFT LoRA adapter")
    print(f"wrote {folder} ({written})")


main = cli.hydra_command("export", _run)


if __name__ == "__main__":
    main()
