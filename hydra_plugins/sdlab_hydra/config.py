"""`hydra/launcher=sdlab` and `hydra/sweeper=sdlab` for any Hydra app (sdlab's own conf/ has the same two)."""

from hydra.core.config_store import ConfigStore

ConfigStore.instance().store(group="hydra/launcher", name="sdlab", provider="sdlab",
                             node={"_target_": "hydra_plugins.sdlab_hydra.lean_launcher.LeanLauncher"})
ConfigStore.instance().store(group="hydra/sweeper", name="sdlab", provider="sdlab",
                             node={"_target_": "hydra_plugins.sdlab_hydra.compose_once.ComposeOnceSweeper",
                                   "max_batch_size": None, "params": None})
