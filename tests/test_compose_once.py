"""The compose-once sweeper hands every job exactly the config Hydra's basic sweeper and loader compose."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

COMMAND_LINES = {  # each: one command line's overrides, swept as Hydra's BasicSweeper sweeps them
    "element after swept parent": ["experiment=guidance_grid", "guidance_scales=[1,2],[3,4]", "guidance_scales.0=9"],
    "element before swept parent": ["experiment=guidance_grid", "guidance_scales.0=9", "guidance_scales=[1,2],[3,4]"],
    "swept element after parent": ["experiment=guidance_grid", "guidance_scales=[1,2]", "guidance_scales.0=5,6"],
    "swept element before parent": ["experiment=guidance_grid", "guidance_scales.0=5,6", "guidance_scales=[1,2]"],
    "swept child, dict parent after": ["scheduler.timestep_spacing=trailing,leading",
                                       "scheduler={timestep_spacing:linspace}"],
    "swept child, dict parent before": ["scheduler={timestep_spacing:linspace}",
                                        "scheduler.timestep_spacing=trailing,leading"],
    "forced element after swept list": ["seeds=[1,2],[3,4]", "++seeds.1=7"],
    "deleted parent after swept child": ["model.dtype=float16,float32", "seed=1,2", "~model.dtype"],
    "plain values only": ["seed=1,2,3", "guidance_scale=1,7.5", "scheduler=ddim,euler"],
    "swept groups and values": ["model=tiny,mini", "model.dtype=float16,float32", "prompt=a,b"],
    "values of every kind": ["seed=range(0,2)", "guidance_scale=range(1,2,0.5)", "prompt='a, b',c\\,d,'${x}'",
                             "negative_prompt=null,''", "+lists=[1,2],[3]", "+extra={a:1},{b:[2,3]}", "~model.dtype"],
}


@pytest.fixture(scope="module")
def hydra_loader():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["hydra.sweep.dir=/tmp/x"], run_mode=RunMode.MULTIRUN)
        yield loader, master


def jobs_of(command_line: list[str]) -> list[list[str]]:
    """The per-job overrides Hydra's basic sweeper makes of a command line."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(command_line)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("name", sorted(COMMAND_LINES))
def test_every_job_gets_the_config_hydra_composes(hydra_loader, name):
    from omegaconf import OmegaConf

    from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs

    loader, master = hydra_loader
    composed = ComposedConfigs(loader)
    jobs = jobs_of(COMMAND_LINES[name])
    assert len(jobs) > 1
    for overrides in jobs:
        composed.compose(master, overrides)
    for overrides in jobs:
        ours = OmegaConf.to_container(composed.load_sweep_config(master, overrides), resolve=False)
        hydras = OmegaConf.to_container(loader.load_sweep_config(master, overrides), resolve=False)
        assert ours == hydras, overrides


def test_the_issue_example_runs_job_1_with_the_element_override(hydra_loader):
    from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs

    loader, master = hydra_loader
    composed = ComposedConfigs(loader)
    jobs = jobs_of(COMMAND_LINES["element after swept parent"])
    for overrides in jobs:
        composed.compose(master, overrides)
    assert [list(composed.load_sweep_config(master, o).guidance_scales) for o in jobs] == [[9, 2], [9, 4]]


@pytest.mark.parametrize("name", sorted(COMMAND_LINES))
def test_the_sweepers_jobs_are_hydras_basic_sweeper_jobs(name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.sdlab_hydra.compose_once import cells

    hydras = jobs_of(COMMAND_LINES[name])
    seeds = [item for job in hydras for item in job if item.partition("=")[0] in ("seed", "seeds")]
    seed_slowest = sorted(hydras, key=lambda job: next((seeds.index(i) for i in job if i in seeds), 0))  # stable
    ours = cells(OverridesParser.create().parse_overrides(COMMAND_LINES[name]))
    assert [[o.input_line for o in job] for job in ours] == seed_slowest
    parser = OverridesParser.create()
    assert all(o == parser.parse_override(o.input_line) for job in ours for o in job)  # as Hydra parses each text


def test_seeds_vary_slowest_so_a_stopped_sweep_has_covered_every_other_axis():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.sdlab_hydra.compose_once import cells

    jobs = [[o.input_line for o in job] for job in cells(OverridesParser.create().parse_overrides(
        ["guidance_scale=1,7.5", "seed=1,2", "scheduler=ddim,euler"]))]
    assert [job[1] for job in jobs] == ["seed=1"] * 4 + ["seed=2"] * 4
    assert {(job[0], job[2]) for job in jobs[:4]} == {(g, s) for g in ("guidance_scale=1", "guidance_scale=7.5")
                                                       for s in ("scheduler=ddim", "scheduler=euler")}
    assert jobs[:2] == [["guidance_scale=1", "seed=1", "scheduler=ddim"], ["guidance_scale=1", "seed=1", "scheduler=euler"]]


def test_the_override_dirname_is_hydras():
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.sdlab_hydra.compose_once import overrides_dirname

    parsed = OverridesParser.create().parse_overrides(["seed=2", "prompt='a, b'", "model=tiny", "+x.y=1"])
    for exclude, sep, kv in (([], ",", "="), (["seed"], "/", ":")):
        assert overrides_dirname(parsed, exclude, sep, kv) == get_overrides_dirname(parsed, exclude, sep, kv)


def test_jobs_past_the_kept_configs_are_composed_from_their_template_not_by_hydra_again(hydra_loader):
    """A sweep keeps the configs of its first `limit` jobs for the launcher; a later job's config came from Hydra's full
    composition again (about 90 ms a job: minutes on a 10,000-cell sweep). It comes from its template, as Hydra's."""
    from omegaconf import OmegaConf

    from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs

    loader, master = hydra_loader
    calls = []

    class Counting:  # Hydra's loader, counting its compositions
        def __getattr__(self, name):
            return getattr(loader, name)

        def load_sweep_config(self, *args, **kwargs):
            calls.append(args)
            return loader.load_sweep_config(*args, **kwargs)

    composed = ComposedConfigs(Counting(), limit=2)
    jobs = [[f"seed={seed}", "guidance_scale=1"] for seed in range(5)]
    for overrides in jobs:
        composed.compose(master, overrides)
    assert len(calls) == 1  # the first job's, its template
    calls.clear()
    for overrides in jobs:
        ours = OmegaConf.to_container(composed.load_sweep_config(master, overrides), resolve=False)
        assert ours == OmegaConf.to_container(loader.load_sweep_config(master, overrides), resolve=False), overrides
    assert calls == []


@pytest.mark.parametrize("typed, ahead", [("no", False), ("off", False), ("false", False), ("yes", True)])
def test_the_lean_launchers_ahead_is_a_bool_as_typed(hydra_loader, typed, ahead):
    """`ahead` is typed: `no` and `off` mean false (OmegaConf reads them so), not a non-empty string taken for true."""
    from hydra.types import RunMode

    loader, _ = hydra_loader
    config = loader.load_configuration("config", overrides=[f"hydra.launcher.ahead={typed}"], run_mode=RunMode.MULTIRUN)
    assert config.hydra.launcher.ahead is ahead

