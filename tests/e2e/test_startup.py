"""A refused override ends before torch is imported (a second or more of start-up saved for every
mistake, and for every test that makes one)."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("command", "override", "key"), [
    ("train", "trainer.max_steps=-5", "trainer.max_steps"),
    ("generate", "decoding.temperature=-1", "decoding.temperature"),
])
def test_a_refused_override_ends_before_torch_is_imported(command, override, key, tmp_path):
    args = [sys.executable, "-X", "importtime", "-m", f"gpt2exp.{command}", override]
    if command == "generate":
        args.append("ckpt=model.pt")
    result = subprocess.run(args, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith(f"error: {key}=")
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    assert "hydra" in imported and "torch" not in imported
