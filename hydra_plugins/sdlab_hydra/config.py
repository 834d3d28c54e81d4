"""`hydra/launcher=sdlab_lean` and `hydra/sweeper=sdlab_compose_once` for any Hydra app (sdlab's conf/ has its own, on
the launcher's typed config)."""

from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LeanLauncherConf:
    """The lean launcher's options, typed: Hydra refuses `ahead=maybe` with one line."""

    _target_: str = "hydra_plugins.sdlab_hydra.lean_launcher.LeanLauncher"
    ahead: bool = False  # sdlab's jobs that share work do it together (see LeanLauncher)


@dataclass
class ComposeOnceSweeperConf:
    """The compose-once sweeper's options, typed as Hydra's basic sweeper's: Hydra refuses `max_batch_size=x` or
    `params=5` with one line."""

    _target_: str = "hydra_plugins.sdlab_hydra.compose_once.ComposeOnceSweeper"
    max_batch_size: Optional[int] = None  # jobs launched at once (null: all)
    params: Optional[Dict[str, str]] = None  # sweep axes as config, e.g. {seed: "1,2"}
    preflight: bool = False  # each job is an sdlab job, checked before anything is written (sdlab's conf sets it)
    cells_per_task: Optional[int] = None  # submitit launchers: cells each task runs in turn


ConfigStore.instance().store(group="hydra/launcher", name="sdlab_lean", provider="sdlab", node=LeanLauncherConf)
ConfigStore.instance().store(group="hydra/sweeper", name="sdlab_compose_once", provider="sdlab",
                             node=ComposeOnceSweeperConf)
