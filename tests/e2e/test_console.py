"""The console commands that ``pip install`` puts on the PATH, and Hydra's tab completion for them."""
from helpers import TINY, run_folders
from helpers.console import run


def test_gpt2exp_train_trains_from_any_folder(tmp_path, text_file):
    result = run("gpt2exp-train", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2",
                 "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
