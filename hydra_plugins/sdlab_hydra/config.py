"""`hydra/launcher=sdlab_lean` and `hydra/sweeper=sdlab_compose_once` for any Hydra app (sdlab's conf/ has its own, on
the launcher's typed config)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class LeanLauncherConf:
    """The lean launcher's options, typed: Hydra refuses `ahead=maybe` with one line."""

    _target_: str = "hydra_plugins.sdlab_hydra.lean_launcher.LeanLauncher"
    ahead: bool = False  # sdlab's jobs that share work do it together (see LeanLauncher)


ConfigStore.instance().store(group="hydra/launcher", name="sdlab_lean", provider="sdlab", node=LeanLauncherConf)
ConfigStore.instance().store(group="hydra/sweeper", name="sdlab_compose_once", provider="sdlab",
                             node={"_target_": "hydra_plugins.sdlab_hydra.compose_once.ComposeOnceSweeper",
                                   "max_batch_size": None, "params": None, "preflight": False,
                                   "cells_per_task": None})
