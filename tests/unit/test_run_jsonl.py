"""A run's JSON-lines files (metrics.jsonl, samples.jsonl) are read one way by every reader: a
resumed run carrying over its metrics, the model store, and compare."""

from gpt2exp.runs.tracking import Tracker


def test_a_resumed_run_carries_over_the_good_lines_of_a_damaged_metrics_file(tmp_path):
    """A torn, non-object or non-UTF-8 line (a killed run, a hand edit) is skipped, not a crash."""
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "metrics.jsonl").write_bytes(b'{"step": 0, "val/loss": 9.5}\n3\n\xff\xfe\n{"step": 2, "val/loss": 8.0}\n{"st')
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    with Tracker(resumed, config={}, backends=()) as tracker:
        tracker.carry_over(previous, up_to_step=2)
    assert (resumed / "metrics.jsonl").read_text().splitlines() == [
        '{"step": 0, "val/loss": 9.5}', '{"step": 2, "val/loss": 8.0}']
