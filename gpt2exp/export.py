"""``python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>``: a trained
model as a Hugging Face folder that ``transformers`` loads offline (``GPT2LMHeadModel`` and
``AutoTokenizer.from_pretrained(out)``), to push to the hub or serve with any transformers tool."""

import shlex
import sys
from pathlib import Path

from gpt2exp import cli
from gpt2exp.errors import UserError

USAGE = "usage: python -m gpt2exp.export ckpt=<checkpoint file or run folder> out=<folder>"


def export(ckpt: str, out: str) -> Path:
    """Write the checkpoint's model into `out` (a new or empty folder, whole or not at all); returns it."""
    from gpt2exp.checkpoint import checkpoint_path, load_trained_model
    from gpt2exp.hf_format import write_hf_folder

    out_dir = Path(out).expanduser()
    model, _ = load_trained_model(checkpoint_path(ckpt))
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise UserError(f"out: '{out}' exists and is not an empty folder; name a new one")
        return write_hf_folder(model, out_dir)
    except OSError as err:
        where = f" at '{err.filename}'" if err.filename else ""
        raise UserError(f"out: cannot write '{out}' ({err.strerror or err}{where})") from None


def main(argv: list[str] | None = None) -> None:
    """The ``gpt2exp-export`` console command."""
    argv = sys.argv[1:] if argv is None else argv
    args = {key: value for key, sep, value in (arg.partition("=") for arg in argv) if sep}
    if len(args) != len(argv) or set(args) != {"ckpt", "out"}:
        cli.fail(f"{USAGE} (got: {shlex.join(argv) or 'nothing'})")
    try:
        folder = export(args["ckpt"], args["out"])
    except UserError as err:
        cli.fail(str(err))
    print(f"wrote {folder} (config.json, model.safetensors, tokenizer files)")


if __name__ == "__main__":
    main()
