"""generate's inputs: prompts from a file (what a bad file says), several prompts sampled together
as each would be alone, and the interactive session's prompts from stdin and its end on Ctrl-C."""
import io
import logging

import pytest
import torch

from gpt2exp.cli import entrypoint as cli
from gpt2exp.cli.generate import SampleLog, plan_generation, read_prompt_file, typed_prompts
from gpt2exp.config import DecodingConfig, GenerateConfig, ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling.decoding import sample_continuations, sample_prompts
from gpt2exp.modeling.model import GPTModel
from gpt2exp.runs.tracking import NullTracker

TINY = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
SAMPLED = DecodingConfig(temperature=1.5, top_k=50, max_new_tokens=8, num_samples=2, seed=5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(TINY).eval()


@pytest.mark.parametrize(
    ("overrides", "content", "message"),
    [
        (["prompt_file=absent.txt"], None, "prompt_file='absent.txt': no such file"),
        (["prompt_file=prompts.txt"], b"\n  \n\r\n", "prompt_file='prompts.txt' holds no prompt: write one per line"),
        (["prompt_file=prompts.txt"], b"caf\xe9\n", "prompt_file='prompts.txt' is not UTF-8 text (byte 3 is 0xe9)"),
        (["prompt_file=."], None, "prompt_file='.' is a folder: give a file of prompts, one per line"),
        (["prompt_file=''"], None, "prompt_file='' is not allowed: a file of prompts, one per line, or null"),
        (["prompt=hi", "prompt_file=prompts.txt"], b"hi\n",
         "prompt_file='prompts.txt' is not allowed: give either prompt=<text> or prompt_file=<file>, not both"),
        (["interactive=true", "prompt=hi"], None,
         "interactive=True is not allowed: reads its prompts from stdin: drop prompt= and prompt_file="),
        (["batch_size=0"], None, "batch_size=0 is not allowed: must be an integer >= 1"),
    ],
)
def test_a_bad_prompt_input_is_one_line_before_the_checkpoint_loads(compose_generate, tmp_path, monkeypatch,
                                                                    overrides, content, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "prompts.txt").write_bytes(content)
    with pytest.raises(UserError) as caught:  # ckpt=x.pt does not exist: the prompts are checked first
        plan_generation(compose_generate(*overrides))
    assert cli.error_message(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_prompt_file_gives_its_lines_in_order_and_no_prompt_gives_the_default(compose_generate, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_bytes("\ufeffonce upon a time\r\n\n  \nthe café \n".encode())
    assert read_prompt_file("prompts.txt") == ["once upon a time", "the café "]
    assert cli.typed(compose_generate(), GenerateConfig).prompt == "Every effort moves you"
    assert cli.typed(compose_generate("interactive=true"), GenerateConfig).prompt is None


@pytest.mark.parametrize("batch_size", [1, 4])
def test_several_prompts_are_sampled_as_each_alone_in_batches_of_any_size(model, batch_size):
    prompts = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]
    out, _ = sample_prompts(model, prompts, SAMPLED, batch_size=batch_size)
    alone = [sample_continuations(model, prompt, SAMPLED)[0] for prompt in prompts]
    assert out.prompts == [prompt for prompt in prompts for _ in range(2)]
    assert out.new_tokens == [row for each in alone for row in each.new_tokens]
    assert len(set(map(tuple, out.new_tokens))) == 6  # the samples of a prompt differ


def test_typed_prompts_skip_blank_and_non_utf8_lines_until_end_of_input(monkeypatch, caplog):
    stdin = io.TextIOWrapper(io.BytesIO(b"first prompt\n\n   \ncaf\xe9\nsecond\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    with caplog.at_level(logging.WARNING, logger="gpt2exp.generate"):
        assert list(typed_prompts()) == ["first prompt", "second"]
    assert caplog.messages == ["stdin: a line that is not UTF-8 text was skipped"]


def test_ctrl_c_ends_an_interactive_session_keeping_what_it_sampled(model, caplog):
    def typed():
        yield "once upon a time"
        raise KeyboardInterrupt

    samples = SampleLog(model, GenerateConfig(ckpt="x.pt", interactive=True, decoding=SAMPLED), NullTracker())
    with caplog.at_level(logging.INFO, logger="gpt2exp.generate"):
        samples.converse(typed())
    assert samples.count == 2 and "interrupted: the session ends" in caplog.messages
