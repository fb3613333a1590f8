"""Named experiment presets, ``experiment=<name>``: ``<name>.yaml`` in the working folder's
``experiments/`` (a user's own), else in gpt2exp's (the top-level experiments/ of a checkout,
shipped in the wheel as gpt2exp/experiments).

Hydra looks a group's options up as ``<group>/<name>.yaml`` under each config root; this
config source serves the ``experiment`` group from those folders instead, so that they can
keep the plural name the project's layout gives them.
"""

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

GROUP = "experiment"
_HERE = Path(__file__).resolve().parent
BUILT_IN = next((path for path in (_HERE / "experiments", _HERE.parent / "experiments") if path.is_dir()),
                _HERE / "experiments")


def preset_folders() -> list[Path]:
    """Where presets are looked up, in order: ./experiments, then gpt2exp's own."""
    own = Path.cwd() / "experiments"
    return [own, BUILT_IN] if own.resolve() != BUILT_IN.resolve() else [BUILT_IN]


def _find(name: str) -> Path | None:
    return next((folder / f"{name}.yaml" for folder in preset_folders() if (folder / f"{name}.yaml").is_file()), None)


class ExperimentsSource(ConfigSource):
    """The ``experiment`` group, read from the `preset_folders`."""

    @staticmethod
    def scheme() -> str:
        return "gpt2exp-experiments"

    def load_config(self, config_path: str) -> ConfigResult:
        group, _, name = self._normalize_file_name(config_path).removesuffix(".yaml").partition("/")
        path = _find(name) if group == GROUP else None
        if path is None:
            raise ConfigLoadError(f"no experiment preset {config_path!r} in {', '.join(map(str, preset_folders()))}")
        text = path.read_text(encoding="utf-8")
        return ConfigResult(config=OmegaConf.create(text), path=f"file://{path.parent}", provider=self.provider,
                            header=ConfigSource._get_header_dict(text[:512]))

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        group, _, name = config_path.removesuffix(".yaml").partition("/")
        return group == GROUP and bool(name) and _find(name) is not None

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        """The group at the root; the preset names in the group."""
        path = config_path.strip("/")
        if path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return sorted({p.stem for folder in preset_folders() if folder.is_dir() for p in folder.glob("*.yaml")})


class ExperimentsSearchPath(SearchPathPlugin):
    """Puts `ExperimentsSource` on every gpt2exp entrypoint's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("gpt2exp-experiments", f"{ExperimentsSource.scheme()}://{os.sep}")


def register() -> None:
    Plugins.instance().register(ExperimentsSource)
    Plugins.instance().register(ExperimentsSearchPath)
