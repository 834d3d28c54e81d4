"""Hydra's basic sweeper, composing each job's config once instead of twice."""

from __future__ import annotations

from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext


class ComposedConfigs:
    """A config loader that hands the launcher the sweep configs its sweeper already composed to validate them."""

    def __init__(self, loader: Any, limit: int = 512):
        self._loader, self._limit = loader, limit
        self._kept: dict[tuple[str, ...], Any] = {}

    def compose(self, master_config: Any, sweep_overrides: Sequence[str]) -> None:
        """Compose one job's config (raising as Hydra would) and keep it for the launcher, up to `limit` of them."""
        config = self._loader.load_sweep_config(master_config=master_config, sweep_overrides=list(sweep_overrides))
        if len(self._kept) < self._limit:
            self._kept[tuple(sweep_overrides)] = config

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        """The kept config of these overrides (handed out once), else a fresh composition."""
        kept = self._kept.pop(tuple(sweep_overrides), None)
        return kept if kept is not None else self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet, as while unpickling in a launcher's worker
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_kept": {}}  # workers compose nothing; don't ship the kept configs


class ComposeOnceSweeper(BasicSweeper):
    """BasicSweeper whose up-front check that every job composes also supplies the launcher's configs."""

    def setup(self, *, hydra_context: HydraContext, task_function: Any, config: Any) -> None:
        """Put the composing loader between the sweeper, its launcher and Hydra's loader."""
        self.composed = ComposedConfigs(hydra_context.config_loader)
        context = HydraContext(config_loader=self.composed, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch now (a bad one fails before any runs) and keep the results."""
        for overrides in batch:
            self.composed.compose(self.config, overrides)
