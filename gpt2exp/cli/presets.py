"""Named experiment presets, ``experiment=<name>``: ``<name>.yaml`` in the working folder's
``experiments/`` (a user's own), else in gpt2exp's (the top-level experiments/ of a checkout,
shipped in the wheel as gpt2exp/experiments).

Hydra looks a group's options up as ``<group>/<name>.yaml`` under each config root; this
config source serves the ``experiment`` group from those folders instead, so that they can
keep the plural name the project's layout gives them. A preset is refused in one line when its
name is not a plain file name (a path), its text is not UTF-8 YAML holding a mapping, or its
aliases would expand it past `MAX_NODES` (a "billion laughs" file).
"""

import os
from pathlib import Path
from typing import cast

import yaml
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

GROUP = "experiment"
MAX_NODES = 100_000  # YAML nodes a preset may hold once its aliases are expanded (real ones: hundreds)
_PACKAGE = Path(__file__).resolve().parents[1]
BUILT_IN = next((path for path in (_PACKAGE / "experiments", _PACKAGE.parent / "experiments") if path.is_dir()),
                _PACKAGE / "experiments")


def preset_folders() -> list[Path]:
    """Where presets are looked up, in order: ./experiments, then gpt2exp's own."""
    own = Path.cwd() / "experiments"
    return [own, BUILT_IN] if own.resolve() != BUILT_IN.resolve() else [BUILT_IN]


def _find(name: str) -> Path | None:
    """The file of preset `name` in the first of the `preset_folders` that has it, else None;
    ConfigLoadError when `name` is a path rather than a file name."""
    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", os.sep)) or "\x00" in name:
        raise ConfigLoadError(f"experiment={name}: not a preset name (a file name in "
                              f"{', '.join(map(str, preset_folders()))}, without its .yaml and without a folder)")
    return next((folder / f"{name}.yaml" for folder in preset_folders() if (folder / f"{name}.yaml").is_file()), None)


def read_preset(path: Path) -> DictConfig:
    """The preset file at `path` as a config; ConfigLoadError (one line naming the file) when it is
    not UTF-8, not YAML, not a mapping, or its aliases expand past `MAX_NODES` nodes."""
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and not isinstance(root, yaml.MappingNode):
            raise ConfigLoadError(f"{path}: a preset must be a YAML mapping (key: value lines), not a {root.id}")
        if root is not None and _expanded_size(root, {}, set()) > MAX_NODES:
            raise ConfigLoadError(f"{path}: its YAML aliases expand past {MAX_NODES:,} nodes; refusing to load it")
        return cast(DictConfig, OmegaConf.create(text))  # a mapping (or nothing): checked above
    except ConfigLoadError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigLoadError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.MarkedYAMLError as err:
        where = f" at line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}" if err.problem_mark else ""
        raise ConfigLoadError(f"{path}: not valid YAML: {err.problem or err.context}{where}") from None
    except (yaml.YAMLError, OmegaConfBaseException, RecursionError) as err:
        problem = " ".join(str(err).split()) or type(err).__name__
        raise ConfigLoadError(f"{path}: not a valid preset: {problem}") from None
    except OSError as err:
        raise ConfigLoadError(f"{path}: cannot read it ({err.strerror or err})") from None


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes `node` stands for with every alias expanded, capped at `MAX_NODES` + 1 (an
    alias is the same node object again: `sizes` counts each once, so this costs the file's size,
    not its expansion)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:  # an alias inside the node it names: it expands without end
        return MAX_NODES + 1
    open_nodes.add(id(node))
    children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else (
        node.value if isinstance(node, yaml.SequenceNode) else [])
    size = 1
    for child in children:
        size = min(size + _expanded_size(child, sizes, open_nodes), MAX_NODES + 1)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


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
        config = read_preset(path)
        return ConfigResult(config=config, path=f"file://{path.parent}", provider=self.provider,
                            header=ConfigSource._get_header_dict(path.read_text(encoding="utf-8")[:512]))

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
