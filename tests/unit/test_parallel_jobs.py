"""How many jobs of a multirun under a local launcher (joblib, submitit_local) run at once, which
sets each job's share of the CPU cores."""

import pytest
from omegaconf import OmegaConf

from gpt2exp.cli.parallel_jobs import BASIC_SWEEPER, jobs_at_once
from gpt2exp.training.reuse import NOT_TRAINING

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def multirun(task: list[str], *, n_jobs=-1, sweeper=BASIC_SWEEPER, sweeper_keys=None, launcher=JOBLIB):
    return OmegaConf.create({"launcher": {"_target_": launcher, "n_jobs": n_jobs},
                             "sweeper": {"_target_": sweeper, "max_batch_size": None, "params": None, **(sweeper_keys or {})},
                             "overrides": {"task": task}})


@pytest.mark.parametrize(("task", "n_jobs", "cores", "sweeper_keys", "expected"), [
    (["optimizer.lr=1e-3"], -1, 16, {}, 1),  # one job: joblib alone would give it 1 of 16 cores
    (["model.context_length=64,128", "trainer.max_steps=50"], -1, 16, {}, 2),
    (["decoding.temperature=0.5,1.0,1.5", "decoding.top_k=range(1,5)"], -1, 2, {}, 2),  # 12 jobs, 2 workers
    (["a=1,2,3,4,5,6"], 4, 16, {}, 4),  # n_jobs caps them
    (["a=1,2,3,4,5,6"], -2, 4, {}, 3),  # joblib's -2: every core but one
    (["a=1,2,3,4,5,6"], -1, 16, {"max_batch_size": 2}, 2),  # the sweeper hands over 2 at a time
    (["b=3"], -1, 16, {"params": {"a": "1,2,3"}}, 3),  # sweeps in the config's hydra.sweeper.params
])
def test_jobs_at_once_is_the_fewest_of_workers_and_the_jobs_handed_over(task, n_jobs, cores, sweeper_keys,
                                                                       expected):
    assert jobs_at_once(multirun(task, n_jobs=n_jobs, sweeper_keys=sweeper_keys), cores) == expected


def test_an_optimizing_sweeper_runs_its_own_batch_and_an_unlistable_sweep_is_unknown():
    optuna = multirun(["optimizer.lr=interval(1e-4,1e-2)"], sweeper=OPTUNA, sweeper_keys={"n_jobs": 3})
    assert jobs_at_once(optuna, 16) == 3 and jobs_at_once(optuna, 2) == 2
    assert jobs_at_once(multirun(["model=glob(*)"]), 16) is None
    assert jobs_at_once(multirun(["a=1,2"], sweeper="some.other.Sweeper"), 16) is None


def test_submitits_local_launcher_runs_every_job_it_is_handed_at_once():
    assert jobs_at_once(multirun(["a=1,2,3,4,5,6"], launcher=SUBMITIT_LOCAL, n_jobs=None), 2) == 6
    assert jobs_at_once(multirun(["a=1,2,3"], launcher=SUBMITIT_LOCAL, n_jobs=None, sweeper_keys={"max_batch_size": 2}),
                        16) == 2


def test_jobs_that_reuse_one_trained_model_count_once():
    """A training sweep's jobs that differ in decoding (or logging) wait for one job's model."""
    decoding = ["decoding.temperature=0.5,1.0,1.5", "decoding.top_k=3,40"]
    assert jobs_at_once(multirun(decoding), 16, NOT_TRAINING) == 1
    assert jobs_at_once(multirun([*decoding, "model.context_length=64,128"]), 16, NOT_TRAINING) == 2
    assert jobs_at_once(multirun(decoding), 16) == 6  # generate's jobs each compute
    assert jobs_at_once(multirun(["logger=none,csv", "decoder=x,y"]), 16, NOT_TRAINING) == 2  # a prefix, not a match
