"""Decoding: the tutorial's numbers, top-p, batches of different lengths, eos, seeds, KV cache, the
graph step's fixed-shape decoding and its fallback, the inference layout."""
import subprocess
import sys

import helpers

FAILING_GRAPH_RUN = """
from gpt2exp.modeling import decoding
from gpt2exp.train import main


def refuse(step, device):
    step()  # the warm-up, as a CUDA capture runs it
    raise RuntimeError("capture refused")


decoding.GRAPH_CAPTURES["cpu"] = refuse  # the graph path on the CPU, failing as a CUDA capture may
main()
"""


def test_a_training_run_whose_graph_capture_fails_samples_all_the_same(text_file, tmp_path):
    """python -m gpt2exp.train, with every graph capture failing: each sample is drawn (eagerly),
    the run finishes, and the failure is one warning that names it."""
    (tmp_path / "failing_graph.py").write_text(FAILING_GRAPH_RUN, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "failing_graph.py"), *helpers.TINY, "data=text", f"data.path={text_file}",
         "logger=none", "trainer.max_steps=4", "trainer.eval_freq=2", "trainer.sample_freq=2",
         "decoding.max_new_tokens=6", "hydra.run.dir=run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("graph decoding failed") == 1 and "(RuntimeError: capture refused)" in output
    assert "sample @ step 2" in output and "sample @ step 4" in output
