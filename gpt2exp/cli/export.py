"""``python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>``: a trained
model as a Hugging Face folder that ``transformers`` loads offline (``GPT2LMHeadModel`` and
``AutoTokenizer.from_pretrained(out)``), to push to the hub or serve with any transformers tool.

A LoRA run's model is exported merged (its base plus the adapters' product); ``merge_lora=false``
writes ``out/base`` (the base, as above) and ``out/adapter`` (a folder that
``peft.PeftModel.from_pretrained`` loads on it)."""

import shlex
import sys
from pathlib import Path

from gpt2exp.cli import entrypoint as cli
from gpt2exp.errors import UserError

USAGE = "usage: python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder> [merge_lora=true|false]"


def export(ckpt: str, out: str, merge_lora: bool = True) -> Path:
    """Write the checkpoint's model into `out` (a new or empty folder, whole or not at all); returns it."""
    from gpt2exp.modeling.checkpoint import checkpoint_path, load_trained_model
    from gpt2exp.modeling.hf_format import write_hf_folder
    from gpt2exp.modeling.lora import is_lora, write_base_and_adapter

    out_dir = Path(out).expanduser()
    model, _ = load_trained_model(checkpoint_path(ckpt), merge_lora=merge_lora)
    if not merge_lora and not is_lora(model):
        raise UserError(f"merge_lora=false: ckpt '{ckpt}' is not a LoRA run's (model.lora.rank is 0); leave it out")
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise UserError(f"out: '{out}' exists and is not an empty folder; name a new one")
        return write_hf_folder(model, out_dir) if merge_lora else write_base_and_adapter(model, out_dir)
    except OSError as err:
        where = f" at '{err.filename}'" if err.filename else ""
        raise UserError(f"out: cannot write '{out}' ({err.strerror or err}{where})") from None


def main(argv: list[str] | None = None) -> None:
    """The ``gpt2exp-export`` console command."""
    argv = sys.argv[1:] if argv is None else argv
    args = {key: value for key, sep, value in (arg.partition("=") for arg in argv) if sep}
    if len(args) != len(argv) or not {"ckpt", "out"} <= set(args) <= {"ckpt", "out", "merge_lora"}:
        cli.fail(f"{USAGE} (got: {shlex.join(argv) or 'nothing'})")
    merge_lora = args.get("merge_lora", "true").lower()
    if merge_lora not in ("true", "false"):
        cli.fail(f"merge_lora={merge_lora!r} is not allowed: true or false")
    try:
        folder = export(args["ckpt"], args["out"], merge_lora=merge_lora == "true")
    except UserError as err:
        cli.fail(str(err))
    written = "config.json, model.safetensors, tokenizer files" if merge_lora == "true" else (
        "base/: the base as a Hugging Face folder, adapter/: its PEFT LoRA adapter")
    print(f"wrote {folder} ({written})")


if __name__ == "__main__":
    main()
