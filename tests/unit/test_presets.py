"""Every experiment, sweeper and launcher preset composes into the run it promises."""

import pytest
import torch

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import TrainConfig


def test_article_is_the_tutorial_run(compose_train):
    cfg = typed(compose_train("experiment=article", "data.path=article.txt"), TrainConfig)
    assert (cfg.data.source, cfg.data.path, cfg.data.batch_size) == ("text", "article.txt", 2)
    assert cfg.model.context_length == 128 and cfg.data.stride == 128
    assert (cfg.model.emb_dim, cfg.model.n_layers, cfg.model.n_heads) == (768, 12, 12)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("adamw", 4e-4, 0.1)
    assert cfg.optimizer.schedule == "constant" and cfg.optimizer.warmup_steps == 0
    assert (cfg.trainer.epochs, cfg.trainer.max_steps) == (10, None)
    assert (cfg.trainer.eval_freq, cfg.trainer.eval_iter) == (10, 5)
    assert cfg.trainer.start_context == "at the start of"
    assert cfg.decoding.temperature == 0.0
    assert (cfg.data.train_ratio, cfg.trainer.precision, cfg.trainer.grad_clip) == (0.8, "fp32", None)
    assert (cfg.optimizer.weight_decay_on, list(cfg.optimizer.betas)) == ("all", [0.9, 0.999])


def test_article_model_is_the_tutorials_gptmodel(compose_train):
    """The tutorial's GPTModel at context 1024: 163,009,536 parameters (an output head of its own,
    no q/k/v bias), as the book counts them; built and counted without allocating its weights."""
    from gpt2exp.modeling.model import GPTModel

    model_cfg = typed(compose_train("experiment=article", "data.path=a.txt", "model.context_length=1024"), TrainConfig).model
    with torch.device("meta"):
        model = GPTModel(model_cfg)
    assert model.num_parameters() == model_cfg.num_parameters() == 163_009_536
    assert model.out_head.weight is not model.tok_emb.weight


@pytest.mark.parametrize(
    ("experiment", "params"),
    [
        ("decoding_sweep", {"decoding.temperature": "0.5,1.0,1.5", "decoding.top_k": "3,40"}),
        ("context_sweep", {"model.context_length": "64,128,256"}),
    ],
)
def test_sweep_presets_are_multiruns_over_their_params(compose_train, experiment, params):
    cfg = compose_train(f"experiment={experiment}", hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == params
    typed(compose_train(f"experiment={experiment}"), TrainConfig)


def test_decoding_sweep_samples(compose_train):
    cfg = compose_train("experiment=decoding_sweep")
    assert cfg.decoding.temperature > 0 and cfg.decoding.top_k is not None


def test_optuna_preset_minimises_over_its_search_space(compose_train):
    cfg = compose_train("hparams_search=optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.n_trials >= 2 and cfg.hydra.mode.name == "MULTIRUN"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "optimizer.warmup_steps"}
    assert sweeper.search_space is None


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "JoblibLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("slurm", "SlurmLauncher"),
    ],
)
def test_launcher_presets_compose(compose_train, launcher, target):
    cfg = compose_train(f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_slurm_preset_asks_for_a_gpu_per_job(compose_train):
    launcher = compose_train("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(  # 10 ** 10 strings once expanded
    f"{level}: &{level} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, level in zip("abcdefghi", "bcdefghij"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken", b"trainer: [1\n", "broken.yaml: not valid YAML: expected ',' or ']'"),
        ("latin1", "seed: caf\xe9\n".encode("latin-1"), "latin1.yaml: not UTF-8 text"),
        ("listed", b"- seed: 1\n", "listed.yaml: a preset must be a YAML mapping"),
        ("bomb", BOMB.encode(), "bomb.yaml: its YAML aliases expand past 100,000 nodes"),
        ("loop", b"trainer: &x [*x]\n", "loop.yaml: its YAML aliases expand past"),
    ],
)
def test_a_bad_preset_file_exits_2_with_one_line_naming_it(run_module, tmp_path, name, content, message):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / f"{name}.yaml").write_bytes(content)
    result = run_module("gpt2exp.train", f"experiment={name}", "logger=none", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'experiments'}/") and message in line, line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name", ["../outside", "sub/outside", "{root}/outside"])
def test_a_preset_name_that_is_a_path_is_refused(run_module, tmp_path, name):
    """Only files in an experiments/ folder are presets: a name with a folder in it, `..` or an
    absolute path, reaches no other YAML file."""
    (tmp_path / "experiments" / "sub").mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "experiments" / "sub"):
        (folder / "outside.yaml").write_text("# @package _global_\nseed: 7\ntrainer:\n  max_steps: -1\n")
    name = name.format(root=tmp_path)
    result = run_module("gpt2exp.train", f"experiment={name}", "logger=none", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: experiment={name}: not a preset name"), line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("data", "prompt"), [("pydocs", "Return the"), ("wikitext2", "The history of"),
                                              ("wikitext103", "The history of"), ("text", "The"), ("hf", "The")])
def test_each_data_preset_samples_from_a_prompt_of_its_own(compose_train, data, prompt):
    """conf/data/start_context/<data>.yaml (pydocs: trainer.start_context's default); a
    trainer.start_context given, or an experiment's, wins."""
    cfg = typed(compose_train(f"data={data}", "data.path=x.txt"), TrainConfig)
    assert cfg.trainer.start_context == prompt
    given = typed(compose_train(f"data={data}", "data.path=x.txt", "trainer.start_context=Once"), TrainConfig)
    assert given.trainer.start_context == "Once"
    article = typed(compose_train("experiment=article", f"data={data}", "data.path=x.txt"), TrainConfig)
    assert article.trainer.start_context == "at the start of"
