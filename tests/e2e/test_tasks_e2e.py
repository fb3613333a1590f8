"""lm-evaluation-harness tasks through the real entrypoints, offline: ``python -m gpt2exp.eval
eval.tasks=[...]`` writes eval.json and a W&B summary, a training run scores them in the loop,
compare shows both, and an unknown task ends in one line."""

import json
from pathlib import Path

from helpers import TINY, run_folders
from helpers.tasks import MC_TASK, ROLLING_TASK, write_tasks
from helpers.wandb_reader import find_wandb_file, read_run

from gpt2exp.cli.compare import compare


def test_eval_tasks_and_training_tasks_land_in_their_files_and_compare_shows_them(run_module, train_run, text_file,
                                                                                   tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", f"eval.tasks=[{MC_TASK},{ROLLING_TASK}]",
                        f"eval.include_path={tasks}", "eval.limit=8")
    assert result.returncode == 0, result.stderr
    [eval_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["limit"] == 8 and report["harness_version"] and report["model"] == str(train_run)
    mc = report["tasks"][MC_TASK]
    assert mc["examples"] == 8 and mc["n_shot"] == 0 and mc["version"] == 1.0
    assert set(mc["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert report["tasks"][ROLLING_TASK]["metrics"]["word_perplexity"] > 0
    assert f"tasks/{MC_TASK}/acc: {mc['metrics']['acc']:.4f}" in result.stdout
    run = read_run(find_wandb_file(eval_dir))
    assert run["job_type"] == "eval" and run["summary"][f"tasks/{MC_TASK}/acc"] == mc["metrics"]["acc"]

    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=4",
                        "trainer.eval_freq=2", f"trainer.eval_tasks=[{MC_TASK}]", "trainer.eval_tasks_limit=4",
                        f"trainer.eval_tasks_include_path={tasks}", "logger=none")
    assert result.returncode == 0, result.stderr
    [train_dir] = [p for p in run_folders(tmp_path) if (p / "metrics.jsonl").is_file()
                   and "tasks/" in (p / "metrics.jsonl").read_text()]
    logged = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [record for record in logged if f"tasks/{MC_TASK}/acc" in record]
    assert [record["step"] for record in scored] == [0, 2, 4]
    assert [record["tokens_seen"] for record in scored] == [0, 2 * 4 * 32, 4 * 4 * 32]
    summary = json.loads((train_dir / "summary.json").read_text())
    assert summary[f"tasks/{MC_TASK}/acc"] == scored[-1][f"tasks/{MC_TASK}/acc"]

    written = compare([eval_dir, train_dir], out_dir=tmp_path / "compared", metric=f"tasks/{MC_TASK}/acc")
    header = (tmp_path / "compared" / "compare.csv").read_text().splitlines()[0].split(",")
    assert {f"tasks/{MC_TASK}/acc", f"tasks/{MC_TASK}/acc_norm", f"tasks/{ROLLING_TASK}/word_perplexity"} <= set(header)
    assert f"tasks/{MC_TASK}/acc_stderr" not in header
    by_run = {Path(row["run"]).name: row for row in written["rows"]}
    assert by_run[eval_dir.name][f"tasks/{MC_TASK}/acc"] == mc["metrics"]["acc"]
    assert by_run[eval_dir.name]["status"] == "ok"
    assert by_run[train_dir.name][f"tasks/{ROLLING_TASK}/word_perplexity"] is None


def test_a_missing_task_folder_exits_2_with_one_line_and_writes_no_result(run_module, train_run, tmp_path):
    """(An unknown task and a hub task offline: tests/unit/test_tasks.py, in process.)"""
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", f"eval.tasks=[{MC_TASK}]",
                        f"eval.include_path={tmp_path / 'nowhere'}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"eval.include_path={tmp_path / 'nowhere'}: no such folder" in line, line
    assert not [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
