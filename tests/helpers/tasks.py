"""Two lm-evaluation-harness tasks on local files, written by the test (offline): a multiple-choice
one (acc, acc_norm) and a rolling-loglikelihood one (perplexities)."""

import json
import random
from pathlib import Path

WORDS = ("the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "red", "blue", "house", "tree",
         "river", "every", "effort", "moves", "you")
MC_TASK, ROLLING_TASK = "tiny_mc", "tiny_rolling"


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def write_tasks(folder: Path, *, examples: int = 12) -> Path:
    """`folder` holding both tasks' YAMLs and JSON lines; pass it as eval.include_path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with (folder / "mc.jsonl").open("w") as f:
        for i in range(examples):  # the last contexts are longer than a 32-token model's window
            context = _words(rng, 6 if i < examples - 2 else 40).capitalize()
            endings = [_words(rng, rng.randint(1, 5)) for _ in range(4)]
            f.write(json.dumps({"ctx": context, "endings": endings, "label": i % 4}) + "\n")
    with (folder / "rolling.jsonl").open("w") as f:
        for _ in range(4):  # longer than the window: several windows each
            f.write(json.dumps({"text": _words(rng, rng.randint(20, 90))}) + "\n")
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (folder / "mc.yaml").write_text(
        f"task: {MC_TASK}\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_target: '{{label}}'\n"
        "doc_to_choice: '{{endings}}'\nmetric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n")
    (folder / "rolling.yaml").write_text(
        f"task: {ROLLING_TASK}\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'rolling.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
        "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
        "  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n")
    return folder
