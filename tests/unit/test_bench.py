"""``python -m gpt2exp.bench``: the table's shape (never its speeds) and its config checks."""
import re

import pytest
from helpers import CONF_DIR
from hydra import compose, initialize_config_dir

from gpt2exp.cli.entrypoint import error_message, typed
from gpt2exp.cli.schema import register_configs
from gpt2exp.config import BenchConfig
from gpt2exp.errors import UserError


def compose_bench(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="bench", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("bench.sections=[train,speed]", "bench.sections"),
        ("bench.sections=[]", "bench.sections"),
        ("bench.steps=0", "bench.steps"),
        ("bench.warmup=-1", "bench.warmup"),
        ("bench.threads=0", "bench.threads"),
    ],
)
def test_out_of_range_bench_settings_name_the_key(override, key):
    typed(compose_bench("model=small"), BenchConfig)
    with pytest.raises(UserError, match=f"^{re.escape(key)}="):
        typed(compose_bench(override), BenchConfig)


def test_a_wrong_precision_fails_at_compose_time_naming_the_choices():
    with pytest.raises(Exception) as info:
        compose_bench("bench.precision=fp64")
    message = error_message(info.value)
    assert "bench.precision" in message and "[auto, fp32, bf16, fp16]" in message


def test_an_absent_device_is_named_by_the_key_that_asked_for_it():
    from gpt2exp.devices import resolve_device
    from gpt2exp.errors import UserError

    with pytest.raises(UserError, match=r"^bench.device='cuda:99' is not available on this machine"):
        resolve_device("cuda:99", key="bench.device")
