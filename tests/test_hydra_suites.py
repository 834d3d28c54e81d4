"""Hydra's own launcher and sweeper test suites, run against sdlab's lean launcher and compose-once sweeper."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.sdlab_hydra.compose_once import ComposeOnceSweeper
from hydra_plugins.sdlab_hydra.lean_launcher import LeanLauncher

BOTH = ["hydra/sweeper=sdlab_compose_once"]


@pytest.fixture(autouse=True)
def no_version_base_yet():
    """Hydra's suites expect a fresh process, where no app has chosen a version_base; sdlab's tests choose one."""
    from hydra import version

    before = version.VersionBase.instance().getbase()
    version.VersionBase.instance().version_base = version._UNSPECIFIED_
    yield
    version.VersionBase.instance().version_base = before


def test_discovery():
    assert LeanLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert ComposeOnceSweeper.__name__ in [p.__name__ for p in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize("launcher_name, overrides", [("sdlab_lean", BOTH), ("basic", BOTH)])
class TestLeanLauncher(LauncherTestSuite):
    """Hydra's launcher suite: the lean launcher with the sweeper, and the sweeper with Hydra's basic launcher."""


@pytest.mark.parametrize("launcher_name, overrides", [("sdlab_lean", [*BOTH, "hydra.sweeper.max_batch_size=2"])])
class TestComposeOnceSweeperWithBatching(BatchedSweeperTestSuite):
    """Hydra's batched-sweeper suite: the compose-once sweeper in batches of two."""


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [
    pytest.param({}, ["-m", "hydra/launcher=sdlab_lean", "hydra/sweeper=sdlab_compose_once",
                      "hydra/hydra_logging=disabled", "hydra/job_logging=disabled"], id="sdlab_launcher_and_sweeper"),
])
class TestLeanLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite (subprocess apps, chdir, working dirs) through the lean launcher and sweeper."""
