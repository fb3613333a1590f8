"""lm-evaluation-harness tasks scored by gpt2exp's model: the same scores as the harness's own
HFLM over the same weights as transformers' model, and one clear line for a bad task."""

import json

import pytest
import torch
from helpers import TINY_MODEL
from helpers.tasks import MC_TASK, ROLLING_TASK, write_tasks
from lm_eval.api.instance import Instance

from gpt2exp.benchmarks.tasks import hflm, hflm_results, task_rows
from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.evaluation.harness_model import GPT2ExpLM
from gpt2exp.evaluation.tasks import TaskRequest, prepare, run_tasks
from gpt2exp.modeling.inference_layout import to_inference_layout
from gpt2exp.modeling.model import GPTModel


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig(**TINY_MODEL)).eval()


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_hflms_on_the_transformers_model(model):
    long_context = " ".join(["every effort moves you"] * 12)  # 48 tokens: cut from the left to the 32-token window
    pairs = [("The cat sat", " on the mat"), ("The cat sat", " on"), ("The cat sat", " ran fast and far away"),
             ("", "Hello world"), (long_context, " forward"), (long_context, " to the river bank"),
             ("A dog ", "ran"),  # a trailing space moves to the continuation
             ("Every effort moves you", " to the river"), ("Every effort moves you", " by")]
    texts = [(" ".join(["the quick brown fox"] * 30),), ("short text",)]
    ours = GPT2ExpLM(to_inference_layout(_copy(model), use="score"), batch_size=8)  # contexts of two lengths batched
    theirs = hflm(model, batch_size=3)
    for (ours_lp, ours_greedy), (hf_lp, hf_greedy) in zip(ours.loglikelihood(_requests("loglikelihood", pairs)),
                                                          theirs.loglikelihood(_requests("loglikelihood", pairs))):
        assert ours_lp == pytest.approx(hf_lp, abs=1e-4) and ours_greedy == hf_greedy
    rolling = _requests("loglikelihood_rolling", texts)
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling), abs=1e-4)


def _copy(model: GPTModel) -> GPTModel:
    copy = GPTModel(model.cfg)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def test_task_scores_equal_the_harnesss_own_through_hflm(model, task_folder):
    request = TaskRequest(tasks=[MC_TASK, ROLLING_TASK], include_path=str(task_folder))
    ours = run_tasks(to_inference_layout(_copy(model), use="score"), request, batch_size=4)
    theirs = hflm_results(model, request, batch_size=4)["results"]
    mc, rolling = ours["tasks"][MC_TASK], ours["tasks"][ROLLING_TASK]
    assert mc["examples"] == 12 and mc["version"] == 1.0 and mc["n_shot"] == 0
    assert mc["metrics"]["acc"] == theirs[MC_TASK]["acc,none"]
    assert mc["metrics"]["acc_norm"] == theirs[MC_TASK]["acc_norm,none"]
    assert mc["metrics"]["acc_stderr"] == pytest.approx(theirs[MC_TASK]["acc_stderr,none"])
    assert rolling["metrics"]["word_perplexity"] == pytest.approx(theirs[ROLLING_TASK]["word_perplexity,none"],
                                                                  rel=1e-4)
    assert rolling["metrics"]["word_perplexity_stderr"] is None  # the harness gives none ("N/A")


def test_an_unknown_task_lists_close_matches(task_folder):
    with pytest.raises(UserError, match=r"^eval.tasks: unknown task 'tiny_mcc'; close matches: tiny_mc"):
        prepare(TaskRequest(tasks=["tiny_mcc"], include_path=str(task_folder)))


def test_a_hub_task_offline_names_it_and_how_to_point_it_at_local_files(monkeypatch, task_folder):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"^eval.tasks: task 'hellaswag' reads the data set Rowan/hellaswag from the "
                                        r"Hugging Face hub, .*HF_HUB_OFFLINE is set.*eval.include_path=<folder>"):
        prepare(TaskRequest(tasks=["hellaswag"], include_path=str(task_folder)))


def test_a_missing_include_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=r"^eval.include_path=.*nowhere: no such folder$"):
        prepare(TaskRequest(tasks=[MC_TASK], include_path=str(tmp_path / "nowhere")))


def test_an_answer_longer_than_the_context_is_refused_in_one_line(model):
    ours = GPT2ExpLM(_copy(model))
    with pytest.raises(UserError, match=r"^a task's answer of 40 tokens is longer than the model's context \(32 tokens\)"):
        ours.loglikelihood(_requests("loglikelihood", [("A", " the" * 40)]))


def test_the_bench_tasks_section_times_both_scorers_on_one_task(model):
    rows = {measure: value for _, measure, value, _ in task_rows(model, questions=3, batch_size=4)}
    assert rows["gpt2exp scorer (3 x 4 choices, batch 4)"] > 0 and rows["HFLM (3 x 4 choices, batch 4)"] > 0
    assert rows["acc, gpt2exp scorer"] == rows["acc, HFLM"]


def test_generate_until_is_hflms_greedy_text_cut_at_the_stop_string(model):
    ours, theirs = GPT2ExpLM(_copy(model)), hflm(model, batch_size=2)
    requests = _requests("generate_until", [("The cat sat", {"until": ["the"], "max_gen_toks": 8}),
                                            ("Every effort", {"until": ["\n"], "max_gen_toks": 5}),
                                            ("Every effort", {"until": "\n", "max_new_tokens": 2})])
    answers = ours.generate_until(requests)
    assert answers == theirs.generate_until(requests) and len(answers[2]) < len(answers[1])


def test_rolling_windows_that_share_a_prefix_take_batch_size_rows_at_a_time(model, monkeypatch):
    """Every text's first window starts with the same end-of-text token: batched, not one forward of all."""
    texts = _requests("loglikelihood_rolling", [(f"text number {i} is here",) for i in range(10)])
    whole = GPT2ExpLM(_copy(model), batch_size=16).loglikelihood_rolling(texts)
    ours = GPT2ExpLM(_copy(model), batch_size=2)
    rows, hidden_states = [], ours.model.hidden_states
    monkeypatch.setattr(ours.model, "hidden_states", lambda t, *a: rows.append(len(t)) or hidden_states(t, *a))
    assert ours.loglikelihood_rolling(texts) == pytest.approx(whole, abs=1e-5)
    assert max(rows) == 2


def test_generate_until_skips_an_empty_stop_string_and_refuses_a_prompt_without_room(model):
    ours = GPT2ExpLM(_copy(model))
    cut = ours.generate_until(_requests("generate_until", [("The cat", {"until": ["\n"], "max_gen_toks": 4})]))
    assert ours.generate_until(_requests("generate_until", [("The cat", {"until": ["", "\n"], "max_gen_toks": 4})])) == cut
    with pytest.raises(UserError, match=r"^a task asks for 32 new tokens \(max_gen_toks\), not fewer than the model's "
                                        r"context \(32 tokens\)"):
        ours.generate_until(_requests("generate_until", [("The cat", {"until": ["\n"], "max_gen_toks": 32})]))


def test_each_filters_metrics_are_kept(model, tmp_path):
    """A task scored under two filters (gsm8k's strict-match and flexible-extract) reports both."""
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps({"q": q, "a": "[invalid]"}) + "\n" for q in ("A", "B")))
    (tmp_path / "gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs: {until: ['\\n'], max_gen_toks: 2}\nmetadata: {version: 1.0}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\nfilter_list:\n"
        "  - {name: strict, filter: [{function: regex, regex_pattern: 'NEVER(\\w+)'}, {function: take_first}]}\n"
        "  - {name: flexible, filter: [{function: regex, regex_pattern: '(.*)'}, {function: take_first}]}\n")
    metrics = run_tasks(_copy(model), TaskRequest(tasks=["tiny_gen"], include_path=str(tmp_path)))["tasks"]["tiny_gen"]
    assert metrics["metrics"]["strict/exact_match"] == 1.0  # no match: the regex filter's "[invalid]"
    assert metrics["metrics"]["flexible/exact_match"] == 0.0
    assert set(metrics["metrics"]) == {f"{name}/exact_match{s}" for name in ("strict", "flexible") for s in ("", "_stderr")}
