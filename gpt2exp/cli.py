"""What every Hydra entrypoint shares: user mistakes end in one line on stderr and exit 2."""

import functools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from gpt2exp.errors import UserError

_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(err: BaseException) -> str:
    """An exception and its cause as one line, without OmegaConf's key/type trailer."""
    parts = []
    while err is not None and len(parts) < 2:
        lines = [line.strip() for line in str(err).splitlines()]
        text = " ".join(line for line in lines if line and not line.startswith(_NOISE))
        if text and text not in parts:
            parts.append(text.rstrip(".") if err.__cause__ else text)
        err = err.__cause__
    return ": ".join(parts)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def reports_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function: a ``UserError`` in a single run removes the half-made run
    folder and exits 2 with one line; in a multirun it fails that job only."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except (UserError, OmegaConfBaseException) as err:
            hydra_cfg = HydraConfig.get()
            if hydra_cfg.mode == RunMode.MULTIRUN:
                raise
            shutil.rmtree(Path(hydra_cfg.runtime.output_dir), ignore_errors=True)
            fail(str(err) if isinstance(err, UserError) else one_line(err))

    return wrapper


def run(hydra_main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function; a config that fails to compose exits 2 with one line."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's printer
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException, UserError) as err:
        fail(one_line(err))
