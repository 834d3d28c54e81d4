"""Hydra's own share of a sweep: sdlab's config, sweeper and per-job files, with a task that does nothing."""

from __future__ import annotations

import hydra

from sdlab.app.cli import CONF_DIR, register_resolvers


def nothing(cfg) -> None:
    """The task: no model, no images, no table."""


if __name__ == "__main__":
    register_resolvers()
    hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(nothing)()
