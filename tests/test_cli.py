"""The command line as users type it: default sweep dirs, prompts with commas, pre-flight, help, errors."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image
import hydra.core.utils
import pytest
from cli_helpers import SDLAB, bare_env, run_cli
from hydra.core.override_parser.overrides_parser import OverridesParser

from sdlab import lazy
from sdlab.app import arguments
from sdlab.app.arguments import display_overrides, hydra_quote, prepare
from sdlab.app.help import help_text, version_text
from sdlab.bench.figure_index import write_index
from sdlab.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
FAST = ("num_inference_steps=2", "threads=1")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("sdlab: error: "), err
    return err


def sweep_roots(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("outputs/*/multirun_*/results.parquet"))


def test_sweep_without_a_sweep_dir_lands_in_outputs(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", *FAST) == 0
    [root] = sweep_roots(tmp_path)
    assert root.parent.name == "generate"
    frame = pd.read_parquet(root / "results.parquet")
    assert frame["status"].tolist() == ["ok", "ok"] and frame["seed"].tolist() == [1, 2]
    assert all((root / p).is_file() for p in frame["image_path"])


def test_sweep_over_recipes_has_one_root(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "experiment=article_b5_cfg_toy,article_d2_timestep_embedding", "threads=1") == 0
    out = capsys.readouterr().out
    assert "recipe 1 of 2: experiment=article_b5_cfg_toy\n" in out  # how far, by recipe, without threads=1
    assert "recipe 2 of 2: experiment=article_d2_timestep_embedding\n" in out
    [root] = sweep_roots(tmp_path)
    assert root.parent.name == "experiments"
    frame = pd.read_parquet(root / "results.parquet")
    assert set(frame["experiment"]) == {"article_b5_cfg_toy", "article_d2_timestep_embedding"}
    assert not (tmp_path / "outputs" / "article_b5_cfg_toy").exists()
    # folders findable by recipe; an index of figures with their claims instead of a grid across recipes
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["0_article_b5_cfg_toy",
                                                                     "1_article_d2_timestep_embedding"]
    assert not (root / "grid.png").exists() and not (root / "summary.csv").exists()
    index = pd.read_csv(root / "index.csv", keep_default_na=False)  # empty cells as "", as a reader sees them
    assert index["id"].tolist() == ["B5", "D2"]
    assert index["figure"].tolist() == ["0_article_b5_cfg_toy/cfg_toy.png",
                                        "1_article_d2_timestep_embedding/timestep_embedding.png"]
    assert index["question"].str.endswith("?").all()
    assert "passes 3x at w = " in index["claim"][0]  # the figure's title, with its number
    markdown = (root / "index.md").read_text()
    assert "| B5 | What does classifier-free guidance do to the prediction? | [cfg_toy.png](0_article_b5_cfg_toy/cfg_toy.png)" in markdown
    with Image.open(root / "contact_sheet.png") as sheet:
        assert sheet.width > 1000 and sheet.height > 300
    where = Path("outputs") / "experiments" / root.name  # the sweep's last line names them as it names the rest
    assert f"index of 2 recipes, 2 figures: {where / 'index.md'}, {where / 'contact_sheet.png'}" in out, out
    command = json.loads((root / "sweep.json").read_text())["command"]  # what was typed, not the subdir sdlab adds
    assert command == ["experiment=article_b5_cfg_toy,article_d2_timestep_embedding", "threads=1"], command


def test_the_index_marks_a_figure_made_on_a_model_the_recipe_was_not_made_for(tmp_path):
    """A recipe made for SD 1.5 run on mini (as the article sweep runs it offline) is marked in index.md."""
    for i, model in enumerate(["mini", "sd15"]):
        job = tmp_path / f"{i}_article_d3_guidance"
        job.mkdir()
        (job / "run_config.json").write_text(json.dumps({
            "article": {"id": "D3", "question": "What changes between guidance 7 and 12.5?"}, "model": {"name": model},
            "made_for": {"what": "SD 1.5 weights (model=sd15)", "models": ["sd15"], "here": "shapes"}}))
        Image.new("RGB", (8, 8)).save(job / "guidance_grid.png")
    write_index(tmp_path)
    lines = [line for line in (tmp_path / "index.md").read_text().splitlines() if "guidance_grid.png" in line]
    assert "**made for SD 1.5 weights (model=sd15); run on model=mini:** -" in lines[0]
    assert "made for" not in lines[1]


@pytest.mark.parametrize("text", [
    "a pirate ship, dramatic lighting, oil painting", "it's a (red:1.2) circle [x] {y}", "back\\slash \\",
    "quote ' and \\' and \"", "a=b, c", "",
])
def test_hydra_quote_round_trips(text):
    assert OverridesParser.create().parse_override(f"prompt={hydra_quote(text)}").value() == text


def test_a_prompt_with_commas_is_one_prompt(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompt = "a small red circle, in the centre, on a blue background"
    assert run_sdlab(f"prompt={prompt}", *FAST, "hydra.run.dir=run") == 0
    frame = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert frame["prompt"].tolist() == [prompt]
    assert json.loads(frame["overrides"][0])["prompt"] == prompt


def test_commas_never_split_a_prompt_into_jobs_and_labels_show_it_as_typed(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "prompt=a large yellow triangle, at the top", "seed=1,2", *FAST) == 0
    [root] = sweep_roots(tmp_path)
    frame = pd.read_parquet(root / "results.parquet")
    assert len(frame) == 2 and set(frame["prompt"]) == {"a large yellow triangle, at the top"}
    assert "\\" not in "".join(frame["overrides"])


def test_hydra_quoting_sweeps_prompts(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "prompt='a red circle, big','a blue square'", *FAST) == 0
    [root] = sweep_roots(tmp_path)
    frame = pd.read_parquet(root / "results.parquet")
    assert frame["prompt"].tolist() == ["a red circle, big", "a blue square"]
    assert [json.loads(o)["prompt"] for o in frame["overrides"]] == frame["prompt"].tolist()


def test_prompt_file_sweeps_one_job_per_line(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red circle, on the left\n\n a blue square \n")
    assert run_sdlab("-m", "prompt_file=prompts.txt", *FAST) == 0
    [root] = sweep_roots(tmp_path)
    assert pd.read_parquet(root / "results.parquet")["prompt"].tolist() == ["a red circle, on the left",
                                                                            "a blue square"]


def test_prompt_file_with_several_prompts_needs_m(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    assert run_sdlab("prompt_file=prompts.txt") == 2
    assert "holds 2 prompts; add -m" in one_error_line(capsys)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args,says", [
    (["-m", "prompt_file=a.txt,b.txt"], "prompt_file=a.txt,b.txt does not exist; it takes one file: put the lines of "
                                        "a.txt and b.txt in one file to sweep them all"),
    (["scorers=[fd]", "reference=a.txt"], "reference=a.txt is a file, not a folder; give a folder of PNG/JPEG images"),
])
def test_a_file_where_another_kind_of_path_belongs_is_named_as_what_it_is(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                          args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a\nb\n")
    (tmp_path / "b.txt").write_text("c\n")
    assert run_sdlab(*args) == 2
    assert one_error_line(capsys).startswith(f"sdlab: error: {says}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_display_overrides_show_values_as_typed():
    shown = display_overrides(["prompt=a\\ large\\ yellow\\ triangle", "guidance_scale=10.0", "seeds=[1,2]",
                               "prompt2='x, y'"])
    assert shown == {"prompt": "a large yellow triangle", "guidance_scale": "10.0", "seeds": "[1,2]",
                     "prompt2": "x, y"}


@pytest.mark.parametrize("args,fragment", [
    (["steps=20"], "did you mean num_inference_steps?"),
    (["cfg_scale=7"], "did you mean guidance_scale?"),
    (["sampler=euler"], "did you mean scheduler?"),
    (["scheduler=dpmpp2m"], "did you mean dpmpp_2m?"),
    (["scheduler=dpm++"], "did you mean dpmpp_2m?"),
    (["scheduler=DPM++ 2M Karras"], "did you mean dpmpp_2m_karras?"),
    (["model.dtyp=float16"], "did you mean dtype?"),
    (["+model.dtyp=float16"], "did you mean dtype?"),
    (["guidance_scale=${nope}"], "guidance_scale: Interpolation key 'nope' not found"),  # prompts never resolve
    (["seed=${oc.env:SDLAB_NO_SUCH_VARIABLE}"], "SDLAB_NO_SUCH_VARIABLE"),
    (["~model"], "cannot be deleted"),
    (["seeds=[1,2"], "cannot read 'seeds=[1,2'"),
    (["prompt"], "'prompt' is not an override"),
    (["-m", "experiment=glob(zzz*)"], "has no jobs"),
    (["-m", "num_inference_steps=2,0"], "num_inference_steps=0 must be >= 1"),
    (["-m", "scheduler=ddim,euler", "scheduler.timestep_spacing=sideways"],
     "unknown scheduler.timestep_spacing 'sideways'"),
    (["images=DIR", "experiment=vae_roundtrip"], "images: DIR does not exist"),
    (["params=prompt.json"], "params=prompt.json does not exist"),
    (["prompt_file=absent.txt"], "prompt_file=absent.txt does not exist"),
    (["guidance_scales=3"], "unknown config key 'guidance_scales' (did you mean guidance_scale?); the main keys are"),
    (["+guidance_scales=3"], "unknown config key 'guidance_scales' (did you mean guidance_scale?)"),  # read by no recipe
    (["images=x.png"], "unknown config key 'images'"),
    (["dtype=float16"], "unknown config key 'dtype' (did you mean model.dtype?); the main keys are"),
    (["use_karras_sigmas=true"], "unknown config key 'use_karras_sigmas' (did you mean scheduler.use_karras_sigmas?)"),
    (["path=x"], "unknown config key 'path' (did you mean model.path or clip.path?)"),
    (["experiment=compare_schedulers_quick", "compare.step=3"],
     "unknown config key 'compare.step' (did you mean steps?); compare.* keys are: prompts, psnr_target"),
    (["experiment=trajectory", "frame=3"], "(did you mean frames?); the main keys are: batch_size"),
    (["experiment=trajectory", "frame=3"], "; experiment=trajectory adds: frames, gif_ms, preview"),
    (["-m", "experiment=trajectory,forward_process", "frames=3", "plan=true"],
     "unknown config key 'frames' for experiment=forward_process (++frames=VALUE sets it there too); the main keys"),
    (["--nope"], "sdlab: error: unrecognized arguments: --nope; see sdlab --help"),
    (["-x", "seed=1"], "unrecognized arguments: -x; see sdlab --help"),
    (["--cfg", "bogus"], "argument --cfg/-c: invalid choice: 'bogus' (choose from 'job', 'hydra', 'all')"),
    (["-m", "--resolve", "seed=1,2"], "--resolve goes only with --cfg or --help"),
    (["--info", "--resolve"], "--resolve goes only with --cfg or --help"),
    (["--cfg=job", "-m", "seed=1,2"], "--multirun and --cfg cannot go together"),
    (["-mr", "seed=1,2"], "--run and --multirun cannot go together"),
    (["-sc", "-m"], "--multirun and --shell-completion cannot go together"),
    (["~hydra.run.dir"], "~hydra.run.dir: where a run writes cannot be deleted; set it instead (e.g. "
                         "hydra.run.dir=DIR)"),
    (["-m", "seed=1,2", "~hydra.sweep"], "~hydra.sweep: where a run writes cannot be deleted; set it instead (e.g. "
                                         "hydra.sweep.dir=DIR)"),
    (["-sc"], "--shell-completion takes one of install=SHELL, uninstall=SHELL, query=SHELL (SHELL: bash, fish, zsh)"),
    (["-sc", "nope"], "--shell-completion nope: it takes one of install=SHELL, uninstall=SHELL, query=SHELL"),
    (["-sc", "install=nope"], "--shell-completion install=nope: it takes one of install=SHELL"),
    # Hydra's rerun unpickles the file it is given: a pickle from anywhere could run code
    (["--experimental-rerun", "/etc/passwd"], "--experimental-rerun is not supported: it unpickles the file it is "
                                              "given; rerun the same command instead (sdlab resumes what is finished)"),
    (["--config-path", "conf.yaml"], "--config-path conf.yaml names a file"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 must be"),
    # submitit: an AssertionError traceback, or every task killed at once and the folder written
    (["-m", "seed=1,2", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=0"],
     "hydra.launcher.tasks_per_node=0 must be an integer >= 1"),
    (["-m", "seed=1,2", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=-1"],
     "hydra.launcher.timeout_min=-1 must be an integer >= 1"),
    (["-m", "seed=1,2", "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=-1"],
     "hydra.launcher.gpus_per_node=-1 must be an integer >= 0"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.prefer=nope"],
     "hydra.launcher.prefer=nope: Hydra's joblib launcher runs every job in a loky worker process; prefer takes "
     "processes only"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.require=x"],
     "hydra.launcher.require=x with prefer=processes: Hydra's joblib launcher runs every job in a loky worker process"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.require=sharedmem"], "require takes null only"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.prefer=threads", "hydra.launcher.require=sharedmem"],
     "hydra.launcher.require=sharedmem with prefer=threads: Hydra's joblib launcher runs every job in a loky worker "
     "process, which shares no memory; require takes null only"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.batch_size=zz"], "batch_size must be 'auto' or"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.pre_dispatch=zz"],
     "hydra.launcher.pre_dispatch=zz must be 'all', a number of jobs >= 1 or an expression of n_jobs"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.pre_dispatch=0*n_jobs"],  # would run no job at all
     "hydra.launcher.pre_dispatch=0*n_jobs must be"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.backend=nope"],  # the launcher always takes loky
     "hydra.launcher.backend=nope: Hydra's joblib launcher runs every job in a loky worker process; backend takes null "
     "or loky only"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.backend=threading"],
     "hydra.launcher.backend=threading: Hydra's joblib launcher runs every job in a loky worker process"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.prefer=threads"],
     "hydra.launcher.prefer=threads: Hydra's joblib launcher runs every job in a loky worker process; prefer takes "
     "processes only"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.mmap_mode=zz"],  # joblib reads it only for big arrays
     "hydra.launcher.mmap_mode=zz must be one of r, r+, w+, c"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.timeout=-1"],
     "hydra.launcher.timeout=-1 must be the seconds a job may take, > 0, or null for no limit"),
    (["-m", "seed=1,2", "hydra.launcher.ahead=maybe"], "hydra.launcher.ahead='maybe' must be true or false"),
    # an option the launcher has not, added as Hydra's own message advises: joblib ignored it, submitit's traceback
    (["-m", "seed=1,2", "hydra/launcher=joblib", "+hydra.launcher.njobs=2"],
     "hydra.launcher.njobs=2: hydra/launcher=joblib has no option njobs (did you mean n_jobs?); its options are: "
     "backend, batch_size, max_nbytes, mmap_mode, n_jobs, pre_dispatch, prefer, require, temp_folder, timeout, verbose"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.njobs=2"],  # Hydra: "use +hydra.launcher.njobs=2"
     "hydra.launcher.njobs=2: hydra/launcher=joblib has no option njobs (did you mean n_jobs?)"),
    (["-m", "seed=1,2", "hydra/launcher=submitit_local", "+hydra.launcher.partition=gpu"],
     "hydra.launcher.partition=gpu: hydra/launcher=submitit_local has no option partition; its options are: "),
    # sdlab's own launcher took `+hydra.launcher.n_jobs=4` to a TypeError of its constructor, and ignored it in a run
    (["-m", "seed=1,2", "+hydra.launcher.n_jobs=4"], "hydra.launcher.n_jobs=4: hydra/launcher=sdlab has no option n_jobs;"
     " its options are: ahead; hydra/launcher=joblib has n_jobs"),
    (["+hydra.launcher.n_jobs=4"], "hydra.launcher.n_jobs=4: hydra/launcher=sdlab has no option n_jobs"),
    (["hydra.launcher.n_jobs=4"], "hydra.launcher.n_jobs=4: hydra/launcher=sdlab has no option n_jobs"),
    # the sweeper's options took any value: a traceback from the first comparison or loop over it
    (["-m", "seed=1,2", "hydra.sweeper.max_batch_size=x"],
     "hydra.sweeper.max_batch_size='x' is not an integer"),
    (["-m", "seed=1,2", "hydra.sweeper.params=5"], "hydra.sweeper.params=5: cannot assign int to Dict[str, str]"),
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.timeout=soon"],  # a float option
     "hydra.launcher.timeout='soon' is not a number"),
    (["-m", "seed=1,2", "+hydra.sweeper.max_batch_size=x"], "error: hydra.sweeper.max_batch_size='x' is not an integer"),
    (["-m", "seed=1,2", "hydra.sweeper.max_batch_size=0"],
     "hydra.sweeper.max_batch_size=0 must be a positive integer or null (all jobs at once)"),
    (["-m", "seed=1,2", "hydra.sweeper.max_batchsize=2"], "hydra.sweeper.max_batchsize=2: hydra/sweeper=sdlab has no "
     "option max_batchsize (did you mean max_batch_size?); its options are: cells_per_task, max_batch_size, params, "
     "preflight"),
    (["hydra.job_logging.handlers.file.filename=/nonexistent/victim.txt", "+hydra.job_logging.handlers.file.mode=w"],
     "hydra.job_logging.handlers.file.filename: a run's log is <run dir>/<hydra.job.name>.log"),  # emptied any file
    (["+hydra.job_logging.handlers.file.mode=w"], "hydra.job_logging.handlers.file.mode: a run's log is"),
    (["params=p.json", "hydra.job.chdir=true"], "hydra.job.chdir=true: sdlab reads the files you name (params="),  # once:
    # "params=p.json does not exist", from the run dir
    (["prompt=a red\x01circle"], "prompt holds the control character '\\x01'; give plain text"),  # a PNG refused after
    (["negative_prompt=\x1b[31mred"], "negative_prompt holds the control character '\\x1b'"),
    (["experiment=clip_tokens", "prompts=['a','b\x7f']"], "prompts holds the control character '\\x7f'"),
    (["prompt=\udcff\udcfe"], "prompt='\\udcff\\udcfe' is not UTF-8 text: byte 0xff is no character; give UTF-8 "
                              "text"),  # bytes of the command line that are no UTF-8, as Python passes them on
    (["-m", "prompt='a red circle','x\udcff'", "num_inference_steps=2"], "prompt='x\\udcff' is not UTF-8 text"),
    (["experiment=clip_tokens", "prompts=['a','b\ud800']"], "prompts='b\\ud800' is not UTF-8 text: '\\ud800' (half a "
                                                            "UTF-16 pair) is no character"),
    (["hydra.job_logging.handlers.console.class=logging.FileHandler"], "hydra.job_logging.handlers.console.class:"),
    (["+hydra.hydra_logging.handlers.f={class:logging.FileHandler,filename:/nonexistent/x}"],
     "hydra.hydra_logging.handlers.f: a run's log is"),
    (["-m", "seed=1,2", "hydra.job_logging={version:1}"], "hydra.job_logging: a run's log is"),
    # exact toy math reads only its own block: a model or generation setting would change nothing
    (["experiment=article_a2_noise", "seed=3"], "seed=3 is not read: experiment=article_a2_noise is toy math (job "
     "noise_image) that reads only its noise: block (noise.size, noise.seed); set noise.seed=3"),
    (["experiment=article_b5_cfg_toy", "guidance_scale=3"], "guidance_scale=3 is not read: experiment=article_b5_cfg_toy "
     "is toy math (job cfg_toy) that reads only its cfg_toy: block (cfg_toy.scales, cfg_toy.dim, cfg_toy.norm_factor, "
     "cfg_toy.seed)"),
    (["experiment=article_d2_timestep_embedding", "model=mini"], "model=mini is not read"),
    (["experiment=article_b6_ddim_steps", "scheduler.timestep_spacing=trailing"],
     "scheduler.timestep_spacing=trailing is not read"),
    (["-m", "experiment=article_b5_cfg_toy,article_d2_timestep_embedding", "prompt=a,b"], "prompt=a,b is not read"),
    (["-m", "experiment=article_a2_noise", "seed=1,2", "plan=true"], "seed=1,2 is not read"),  # as the sweep would say
    # a job that denoises nothing reads no denoising or scoring setting
    (["experiment=schedule_snr", "guidance_scale=3"], "guidance_scale=3 is not read: experiment=schedule_snr denoises "
     "nothing (job schedule_snr); of the generation settings it reads num_inference_steps, width, height"),
    (["experiment=anatomy", "model=sd15_arch", "negative_prompt=blurry"], "negative_prompt=blurry is not read"),
    (["experiment=anatomy", "model=sd15_arch", "width=1024"], "width=1024 is not read: experiment=anatomy denoises "
     "nothing (job anatomy); of the generation settings it reads none"),
    (["experiment=schedule_snr", "seed=3"], "seed=3 is not read"),
    (["experiment=clip_tokens", "prompt=a red circle"], "prompt=a red circle is not read"),
    (["experiment=vae_roundtrip", "scorers=[clip]"], "scorers=[clip] is not read"),
    (["-m", "experiment=clip_tokens,article_b5_cfg_toy", "eta=0.5"], "eta=0.5 is not read by any job of "
     "experiment=clip_tokens,article_b5_cfg_toy"),
    # a grid takes the axis it draws from its own list
    (["experiment=guidance_grid", "guidance_scale=3"], "guidance_scale=3 is not read: experiment=guidance_grid (job "
     "guidance_grid) draws its own guidance_scales; give guidance_scales= instead"),
    (["-m", "experiment=guidance_grid", "guidance_scale=1,7.5"], "guidance_scale=1,7.5 is not read"),
    (["experiment=prompt_grid", "prompt=a red circle"], "prompt=a red circle is not read: experiment=prompt_grid (job "
     "prompt_grid) draws its own prompts; give prompts= instead"),
    (["experiment=article_b8_schedulers", "scheduler=ddim"], "scheduler=ddim is not read: "
     "experiment=article_b8_schedulers (job scheduler_grid) draws its own schedulers; give schedulers= instead"),
    (["experiment=compare_schedulers_quick", "scheduler=euler"], "scheduler=euler is not read: "
     "experiment=compare_schedulers_quick (job compare_schedulers) draws its own schedulers; give compare.schedulers= "
     "instead"),
    (["experiment=article_f1_distance_guidance", "scheduler=euler"], "scheduler=euler is not read"),
    (["experiment=compare_schedulers_quick", "num_inference_steps=10"], "num_inference_steps=10 is not read: "
     "experiment=compare_schedulers_quick (job compare_schedulers) draws its own steps; give compare.steps= instead"),
    (["experiment=compare_schedulers_quick", "seed=3"], "seed=3 is not read: experiment=compare_schedulers_quick (job "
     "compare_schedulers) draws its own seeds; give compare.seeds= instead"),
    (["experiment=compare_schedulers_quick", "prompt=a red circle"], "prompt=a red circle is not read"),
    (["experiment=article_f2_distance_nfe", "guidance_scale=3"], "guidance_scale=3 is not read: "
     "experiment=article_f2_distance_nfe (job distribution_distance) draws its own guidance_scales; give "
     "distance.guidance_scales= instead"),
    (["experiment=article_f1_distance_guidance", "num_inference_steps=8"], "num_inference_steps=8 is not read"),
    (["experiment=compare_schedulers_quick", "eta=0.5"], "eta=0.5 is not read: experiment=compare_schedulers_quick "
     "(job compare_schedulers) runs with eta=0"),
    (["experiment=compare_schedulers_quick", "batch_size=2"], "batch_size=2 is not read"),
    (["experiment=article_f1_distance_guidance", "seed=3"], "seed=3 is not read: experiment=article_f1_distance_guidance "
     "(job distribution_distance) runs with seeds 0 to distance.images - 1"),
    # a job that follows one image through takes one seed
    (["experiment=trajectory", "seeds=[1,2,3]"], "seeds=[1,2,3]: job trajectory follows one seed's image; give one "
     "(seed=1), or sweep them with -m seed=1,2,3"),
    (["experiment=article_c1_pipeline_by_hand", "seeds=[4,5]"], "seeds=[4,5]: job pipeline_by_hand follows one seed's"),
    (["experiment=article_c2_img2img", "seeds=[4,5]"], "seeds=[4,5]: job img2img_strength follows one seed's"),
    (["experiment=train_mini", "train.stage=vae", "train.out=t", "train.vae.batch_size=100000000"],
     "train.vae.batch_size=100000000 must be an integer >= 1 and <= 4096"),  # not 1.1 TiB asked of the allocator
    (["eta=0.5", "scheduler=euler"], "eta=0.5 is not read: only ddim's step takes eta (on SD 1.x, 2.x and SDXL, not on a "
                                     "flow model), and this run steps with euler"),
    (["eta=0.5", "scheduler=ddim", "model=flux_tiny"], "eta=0.5 is not read: only ddim's step takes eta"),
    (["-m", "scheduler=euler,dpmpp_2m", "eta=0.5"], "eta=0.5 is not read: only ddim's step takes eta (on SD 1.x, 2.x "
                                                   "and SDXL, not on a flow model), and the jobs step with dpmpp_2m, euler"),
    (["-m", "scheduler=euler,dpmpp_2m", "eta=0.5", "plan=true"], "eta=0.5 is not read: only ddim's step takes eta"),
    (["scorers=[[clip]]"], "unknown scorer ['clip']; scorers are: clip,"),  # a list in the list: no internal error
    (["job=[a]"], "job=['a'] must be a job's name, e.g. generate"),
    (["experiment=article_a6_clip_similarity", "article=5"], "article=5 must be a mapping of id, question, reports"),
    (["experiment=article_a6_clip_similarity", "article.reports=3"], "article.reports=3 must be a string or null"),
    (["experiment=guidance_grid", "guidance_scales=[1,7.5,1]"], "guidance_scales=[1, 7.5, 1] repeats 1; list each once"),
    (["experiment=guidance_grid", "guidance_scales=[0,0.5,1,2]"],  # diffusers runs no guidance there: w=1's image
     "guidance_scales: 0, 0.5 are below 1, where model=mini runs no classifier-free guidance and makes the image of 1; "
     "give scales of 1 or more"),
    (["experiment=article_f1_distance_guidance", "distance.guidance_scales=[0.5,3]"],
     "distance.guidance_scales: 0.5 is below 1, where model=mini runs no classifier-free guidance"),
    (["experiment=prompt_grid", "prompts=[a,b,a]"], "prompts=['a', 'b', 'a'] repeats 'a'; list each once"),
    (["experiment=forward_process", "timesteps=[0,0]"], "timesteps=[0, 0] repeats 0; list each once"),
    (["model=tiny", "clip.path=/nonexistent"], "clip.path=/nonexistent is not read: clip=none scores with no CLIP model; "
     "add clip=mini or clip=openai_l14 to use it"),
    (["experiment=forward_process", "spaces=[pixel,pixel]"], "spaces=['pixel', 'pixel'] repeats 'pixel'"),
    (["experiment=article_b8_schedulers", "schedulers=[ddim,ddim]"], "schedulers=['ddim', 'ddim'] repeats 'ddim'"),
    (["experiment=article_c2_img2img", "strengths=[0.5,0.5]"], "strengths=[0.5, 0.5] repeats 0.5; list each once"),
])
def test_bad_input_is_refused_before_anything_is_written(run_sdlab, tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*args) == 2
    assert fragment in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_model_setting_read_by_some_job_of_a_sweep_is_taken(run_sdlab, tmp_path, monkeypatch, capsys):
    """Toy math reads only its own block, but a sweep with one job that loads the model takes model= for that job."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "experiment=article_b5_cfg_toy,schedule_snr", "model=tiny", "threads=1",
                     "hydra.sweep.dir=s") == 0
    frame = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert set(frame["experiment"]) == {"article_b5_cfg_toy", "schedule_snr"}
    assert run_sdlab("experiment=schedule_snr", "model=tiny", "num_inference_steps=7", "threads=1",
                     "hydra.run.dir=r") == 0  # the steps whose visits it draws: read
    assert run_sdlab("experiment=forward_process", "model=tiny", "seed=3", "width=64", "height=64", "threads=1",
                     "hydra.run.dir=f") == 0  # its recipe's own seed, of the noise it adds
    assert run_sdlab("experiment=article_b8_schedulers", "model=tiny", "reference_steps=0", "num_inference_steps=2",
                     "seeds=[1]", "scheduler.timestep_spacing=trailing", "threads=1",
                     "hydra.run.dir=g") == 0  # the options every sampler of the grid is built with: read
    assert pd.read_parquet(tmp_path / "f" / "results.parquet")["seed"].eq(3).all()
    assert run_sdlab("-m", "experiment=guidance_grid,generate", "guidance_scale=3", "plan=true") == 0  # generate's


def test_a_setting_toy_math_does_not_read_is_not_offered_back_as_a_lookup_of_itself(run_sdlab, tmp_path, monkeypatch,
                                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("experiment=article_a2_noise", "seed=${noise.seed}") == 2
    assert one_error_line(capsys).endswith("reads only its noise: block (noise.size, noise.seed)")


def test_an_unknown_option_of_a_hydra_group_lists_the_options_and_no_search_path(run_sdlab, tmp_path, monkeypatch,
                                                                                 capsys):
    """Hydra's message went on with 'Config search path:; provider=hydra, path=pkg://hydra.conf; ...'."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("hydra/launcher=nope") == 2
    assert one_error_line(capsys) == ("sdlab: error: unknown hydra/launcher 'nope'; choose one of: basic, joblib, "
                                      "sdlab, sdlab_lean, submitit_local, submitit_slurm")


@pytest.mark.parametrize("args,page", [(["--version", "extra"], "version"), (["-V", "seed=1"], "version"),
                                       (["--help", "extra"], "help"), (["seed=1", "--help"], "help"),
                                       (["-m", "seed=1,2", "-h"], "help"), (["guidance_scale=abc", "--help"], "help")])
def test_help_or_version_anywhere_prints_sdlabs_page_and_nothing_runs(run_sdlab, tmp_path, monkeypatch, capsys, args,
                                                                      page):
    """As argparse (and git, python, ls) read them: `--help` or `--version` anywhere prints sdlab's page, whatever else
    was typed, and runs nothing; `sdlab seed=1 --help` once printed Hydra's generic page ("cli is powered by Hydra")."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*args) == 0
    printed = capsys.readouterr()
    assert printed.out == {"help": help_text, "version": version_text}[page]() + "\n" and printed.err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,fix", [(["model=tiny", "+seed=3"], "write seed=3 to change it"),
                                      (["+seed=1,2"], "write seed=1,2 to change it"),
                                      (["-m", "experiment=trajectory,forward_process", "+frames=3", "plan=true"],
                                       "experiment=trajectory sets frames already; write ++frames=3"),
                                      (["+model.dtype=float16"], "write model.dtype=float16 to change it"),
                                      (["+scheduler.name=ddim"], "write scheduler.name=ddim to change it"),
                                      (["+clip.path=x"], "write clip.path=x to change it"),  # the default clip's
                                      (["model=sd3", "+model.repo_id=x"], "write model.repo_id=x to change it"),
                                      (["experiment=article_e2_clip_matrix", "model=tiny", "+clip.path=x"],
                                       "write clip.path=x to change it"),  # the recipe's clip, over the model's
                                      (["-m", "model=mini,sd3", "+model.repo_id=x", "plan=true"],
                                       "model=sd3 sets model.repo_id already; write ++model.repo_id=x")])
def test_adding_a_key_the_recipe_sets_names_the_fix(run_sdlab, tmp_path, monkeypatch, capsys, args, fix):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(*args) == 2
    line = one_error_line(capsys)
    assert fix in line and "Could not append" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["experiment=article_a7_trajectory", "+preview=linear"],  # trajectory's job reads it
                                  ["-m", "experiment=trajectory,forward_process", "++frames=3"],
                                  ["experiment=schedule_snr", "+families=[]"],
                                  ["experiment=compare_schedulers_quick", "+compare.steps=[2]"],  # a list merges
                                  ["+seeds=[1,2]"],  # seeds is null until set
                                  ["+model.repo_id=x"], ["+scheduler.timestep_spacing=leading"],  # null in mini's
                                  ["model=tiny", "+clip.path=x"]])  # tiny picks clip none
def test_a_key_added_for_a_job_that_reads_it_passes(args):
    assert args[-1] in prepare(args)


def test_a_plain_value_given_again_replaces_the_first_as_scripts_expect():
    assert prepare(["-m", "seed=1", "model=tiny", "seed=2"])[:4] == ["-m", "seed=1", "model=tiny", "seed=2"]


def test_a_seed_two_cells_of_the_same_settings_would_make_is_refused(run_sdlab, tmp_path, monkeypatch, capsys):
    """`-m 'seeds=[1,2],[2,3]'` made seed 2's image twice, in one shared call of 4 (a plan of 4 images, 3 rows)."""
    monkeypatch.chdir(tmp_path)
    for plan in ("plan=true", "plan=false"):
        assert run_sdlab("-m", "seeds=[1,2],[2,3]", "model=tiny", plan) == 2
        assert ("seeds=[1,2],[2,3] gives seed 2 to two cells of the same settings: its image would be made twice; "
                "list each seed once") in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    assert run_sdlab("-m", "seeds=[1,2],[2,3]", "guidance_scale=1,3", "model=tiny", "plan=true") == 2
    capsys.readouterr()
    assert run_sdlab("-m", "seeds=[1,2],[3,4]", "model=tiny", "plan=true") == 0  # apart: each image once


@pytest.mark.parametrize("swept", ["batch_size=1,2", "threads=1,2"])
def test_a_sweep_of_a_setting_that_does_not_change_the_image_is_refused(run_sdlab, tmp_path, monkeypatch, capsys,
                                                                       swept):
    """batch_size and threads are left out of an image's hash (its image is the same): a sweep of them made each image
    once, so half of its cells got no row, with exit code 0."""
    monkeypatch.chdir(tmp_path)
    for plan in ("plan=true", "plan=false"):
        assert run_sdlab("-m", swept, "seed=1,2", "model=tiny", plan) == 2
        key = swept.partition("=")[0]
        assert one_error_line(capsys) == (
            f"sdlab: error: {swept} sweeps a setting that does not change an image: its cells would share their "
            f"images, each made once; to time {key}, sweep it in one folder per value")
    assert list(tmp_path.iterdir()) == []


def test_a_key_a_recipe_leaves_out_but_its_job_reads_is_named_with_the_plus_that_adds_it(run_sdlab, tmp_path,
                                                                                          monkeypatch, capsys):
    """`experiment=article_a7_trajectory preview=linear` was an unknown key, with no word that its job reads it."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("experiment=article_a7_trajectory", "preview=linear") == 2
    assert ("unknown config key 'preview' (+preview=linear adds it: job trajectory reads it)"
            in one_error_line(capsys))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, why", [
    (["prompt_file=F", "prompt=x"], "both set the prompts"), (["prompt=x", "prompt_file=F"], "both set the prompts"),
    (["seed=1,2", "seeds=[3,4]"], "seeds, when set, replaces seed"), (["seeds=[3,4]", "seed=1"], "seeds, when set"),
    (["seed=1,2", "seed=3"], "seed is given twice: only the last would count"),  # ran seed 3 alone, without a word
    (["guidance_scale=1", "+guidance_scale=7.5,9"], "guidance_scale is given twice"),
    (["model=tiny", "model=tiny,mini"], "model is given twice"), (["seed=range(2)", "seed=1"], "seed is given twice"),
])
def test_two_keys_of_which_one_would_be_dropped_are_refused(run_sdlab, tmp_path, monkeypatch, capsys, args, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "F").write_text("a cat\na dog\n")
    assert run_sdlab("-m", *args, "plan=true") == 2
    assert f"{args[0]} and {args[1]} cannot go together ({why}" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["F"]


@pytest.mark.parametrize("typed,full", [("--multi", "--multirun"), ("--hel", "--help"), ("--cf", "--cfg"),
                                        ("--h", "--help or --hydra-help"), ("--multi=1", "--multirun")])
def test_an_abbreviated_flag_is_refused_naming_the_full_flag(run_sdlab, tmp_path, monkeypatch, capsys, typed, full):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab(typed, "job", "seed=1,2", "num_inference_steps=1", "threads=1") == 2
    assert f"{typed.partition('=')[0]} is short for {full}" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("multirun", ["-m", "--multirun"])
def test_both_spellings_of_multirun_name_a_sweep_over_recipes_alike(multirun):
    prepared = prepare([multirun, "experiment=trajectory,forward_process", "hydra.sweep.dir=s"])
    assert any(arg.startswith("hydra.sweep.subdir=") for arg in prepared)


def test_a_null_seeds_leaves_seed_alone():
    assert "seed=3" in prepare(["seeds=null", "seed=3"])


def test_a_bad_value_in_one_sweep_job_stops_the_sweep_before_the_first_job(run_sdlab, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "guidance_scale=1,-5", *FAST) == 2
    assert "guidance_scale=-5.0 must be in [0, 1000]" in one_error_line(capsys)
    assert not (tmp_path / "outputs").exists()


def test_a_refused_run_keeps_every_file_of_an_existing_run_dir(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "D" / ".hydra").mkdir(parents=True)
    (tmp_path / "D" / "notes.log").write_text("mine")
    (tmp_path / "D" / ".hydra" / "config.yaml").write_text("mine")
    assert run_sdlab("hydra.run.dir=D", "scheduler.timestep_spacing=sideways") == 2
    one_error_line(capsys)
    assert (tmp_path / "D" / "notes.log").read_text() == "mine"
    assert (tmp_path / "D" / ".hydra" / "config.yaml").read_text() == "mine"


def test_sweep_announces_its_jobs_and_images(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=1", "threads=1") == 0
    out = capsys.readouterr().out
    assert "sdlab: 4 jobs, 4 images -> " in out and "checking" not in out  # a small sweep's check is over at once


def test_a_large_sweep_says_it_is_checking_its_cells_before_the_silent_seconds_that_takes(run_sdlab, tmp_path,
                                                                                           monkeypatch, capsys):
    from hydra_plugins.sdlab_hydra import compose_once

    monkeypatch.setattr(compose_once, "ANNOUNCED_CELLS", 4)  # 1000 in use: a sweep that size takes minutes here
    monkeypatch.setattr(compose_once, "CHECK_LINES_EVERY", 0)  # a line at each of 3 steps a cell, not every 2 s
    assert run_sdlab("-m", "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=1", "threads=1",
                     f"hydra.sweep.dir={tmp_path}") == 0
    out = capsys.readouterr().out
    assert "sdlab: checking 4 cells before anything is written" in out
    assert out.index("checking 4 cells") < out.index("sdlab: 4 jobs, 4 images -> ")
    # and where the checks stand as they go, as the sweep's progress line says it as its jobs end
    lines = [line for line in out.splitlines() if line.startswith("sdlab: checked ")]
    assert [line.split(",")[0] for line in lines] == [f"sdlab: checked {n * 100 // 12}% of 4 cells"
                                                      for n in range(1, 13)]
    assert "about " in lines[5] and " left" in lines[5] and lines[-1].endswith(", nothing left")
    assert out.index(lines[-1]) < out.index("sdlab: 4 jobs, 4 images -> ")


def test_progress_lines_name_each_cell_by_what_varies_and_how_far_through_the_sweep(run_sdlab, tmp_path,
                                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seeds=[1,2]", "guidance_scale=1,7.5", "model=tiny", *FAST) == 0
    out = capsys.readouterr().out
    assert "job 1 of 2: guidance_scale=1\n" in out and "job 2 of 2: guidance_scale=7.5\n" in out
    for seed in (1, 2):
        assert f"[job 2 of 2] guidance_scale=7.5 seed={seed}: " in out


def test_job_folders_are_zero_padded_to_the_sweep_size_and_a_rerun_finds_them(run_sdlab, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    sweep = ("-m", "seed=range(0,11)", "model=tiny", "num_inference_steps=1", "threads=1", "hydra.sweep.dir=s")
    assert run_sdlab(*sweep) == 0
    folders = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert folders == [f"{n:02d}" for n in range(11)]  # 00 .. 10: `ls` order is job order
    frame = pd.read_csv(tmp_path / "s" / "results.csv")
    assert frame["seed"].tolist() == list(range(11)) and frame["image_path"].str.startswith("10/").sum() == 1
    capsys.readouterr()
    jobs = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.parent != tmp_path / "s"]
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in jobs}
    assert run_sdlab(*sweep) == 0
    assert ("sdlab: 11 jobs, 11 images -> s; 11 finished before: not run again (resume=false runs them again)\n"
            in capsys.readouterr().out)
    # a finished cell's folder is left as it is: no file in it written again, none added
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in jobs} == written
    assert sorted(p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.parent != tmp_path / "s") == sorted(jobs)


def test_a_rerun_through_hydras_basic_launcher_leaves_each_finished_job_as_it_was(run_sdlab, tmp_path, monkeypatch,
                                                                                  capsys):
    """A launcher that runs every cell again (Hydra's basic one, joblib) finds each finished job and takes its rows:
    the job's table, mark (with the generation time later plans estimate from), config and images keep their bytes."""
    monkeypatch.chdir(tmp_path)
    sweep = ("-m", "seed=1,2", "model=tiny", *FAST, "hydra/launcher=basic", "hydra.sweep.dir=s")
    assert run_sdlab(*sweep) == 0
    own = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.parent != tmp_path / "s"
           and ".hydra" not in p.parts and p.suffix != ".log"]  # Hydra's own job files are Hydra's to write
    assert {p.name for p in own} >= {"results.parquet", "results.csv", "job.json", "run_config.json"}
    assert all("gen_s" in json.loads(p.read_text()) for p in own if p.name == "job.json")
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in own}
    capsys.readouterr()
    assert run_sdlab(*sweep) == 0
    out = capsys.readouterr().out
    assert out.count("skipped: already complete in ") == 2 and "results.csv: 2 ok, 0 failed" in out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in own} == written


def test_a_grid_job_names_each_image_by_its_cell(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("experiment=guidance_grid", "guidance_scales=[1,7.5]", "model=tiny", *FAST) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " s (text " in line]
    assert len(lines) == 2 and "guidance_scale=1.0 seed=0: " in lines[0] and "guidance_scale=7.5 seed=0: " in lines[1]
    last = out.splitlines()[-3:]  # the table, the job's claim (once), what to open
    head = "  guidance_grid.png: a small red circle in the centre on a blue background (tiny, 2 steps); "  # the prompt
    assert last[0].endswith("results.csv: 2 ok, 0 failed") and last[1].startswith(head + "prompt ")
    assert out.count(last[1].split(": ", 1)[1]) == 1
    # the untrained model misses the prompt at both scales: a flat adherence line is said, not drawn
    assert last[1].startswith(head + "prompt missed by all 2 images")
    assert last[2].startswith("  open: ") and "guidance_grid.png" in last[2] and "clip_vs_guidance" not in last[2]


def test_embedded_model_warns_about_prompts_and_sizes_it_was_not_made_for(run_sdlab, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("prompt=a cat on a sofa", "width=128", "num_inference_steps=1", "threads=1") == 0
    out = capsys.readouterr().out
    assert "outside model=mini's shapes grammar (it does not know: cat, sofa)" in out
    assert "width=128 height=64 differ from model=mini's native 64x64 px" in out
    log = next((tmp_path / "outputs").rglob("cli.log")).read_text()  # said before the run dir was made: kept there too
    assert "[WARNING] prompt='a cat on a sofa' is outside model=mini's shapes grammar" in log
    assert "width=128 height=64 differ" in log and out.count("width=128 height=64 differ") == 1


def test_a_recipes_prompts_outside_the_models_world_are_warned_of_unless_only_tokenized(run_sdlab, tmp_path, capsys):
    """clip_similarity's P4 and P5 ranked as nearest neighbours of a shapes prompt with no word that mini's text
    encoder never saw them; clip_tokens only counts tokens, which any words have."""
    assert run_sdlab("experiment=clip_similarity", "threads=1", f"hydra.run.dir={tmp_path / 'similarity'}") == 0
    assert "prompts P4, P5 are outside model=mini's shapes grammar (it does not know: pirate, ship" in (
        capsys.readouterr().out)
    assert run_sdlab("experiment=clip_tokens", "threads=1", f"hydra.run.dir={tmp_path / 'tokens'}") == 0
    assert "outside model=mini's shapes grammar" not in capsys.readouterr().out


def test_the_console_script_keeps_entrys_exit_code_and_runs_exit_handlers(tmp_path):
    """`main` only leaves its objects out of the collection at exit: exit handlers run and the code is entry's."""
    code = ("import atexit, sys; atexit.register(lambda: print('handler ran')); "
            "sys.argv = ['sdlab', 'guidance_scale=abc']; from sdlab.app.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and done.stdout == "handler ran\n"
    assert done.stderr.startswith("sdlab: error: ") and len(done.stderr.splitlines()) == 1


def test_help_describes_sdlab_without_loading_torch(tmp_path):
    probe = ("import sys; sys.argv = ['sdlab', '--help']; from sdlab.app.cli import entry; entry(); "
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 0 and out.strip().endswith("torch not loaded"), result.stderr
    for expected in ("usage: sdlab", "num_inference_steps", "dpmpp_2m_karras", "compare_schedulers",
                     "sdlab-mini", "prompt_file"):
        assert expected in out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "_base" not in listed and "_options" not in listed and "powered by Hydra" not in out


def entry_in_a_new_process(args: list[str], cwd: Path, watched: tuple[str, ...], **env: str) -> subprocess.CompletedProcess:
    """`sdlab ARGS` through `entry` in a fresh interpreter, whose last line of output is `exit CODE [the watched
    modules it imported]`."""
    probe = (f"import sys; sys.argv = ['sdlab', *{args!r}]; from sdlab.app.cli import entry\ncode = 0\n"
             "try:\n    entry()\nexcept SystemExit as e:\n    code = e.code\n"
             f"print('exit', code, sorted(m for m in {watched!r} if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_reading_the_command_line_waits_for_no_table_library(tmp_path):
    """A refused value and --help are answered before pandas and pyarrow (0.6 s of imports) would load."""
    for args, code in ((["guidance_scale=abc"], 2), (["--help"], 0), (["-m", "seed=1,2,1"], 2)):
        done = entry_in_a_new_process(args, tmp_path, ("pandas", "pyarrow", "torch"))
        assert done.stdout.strip().splitlines()[-1] == f"exit {code} []", (args, done.stdout[-500:], done.stderr)


def test_a_lazy_module_pickles_as_itself():
    """A joblib worker gets `python -m sdlab.app.cli`'s functions pickled by value, their module globals with them."""
    assert pickle.loads(pickle.dumps(lazy.torch)).float32 is lazy.torch.float32


def test_a_lazy_no_grad_turns_gradients_off_inside_only():
    """The trainers' `@no_grad` stands for `@torch.no_grad()` without importing torch where they are defined."""
    weight = lazy.torch.ones(2, requires_grad=True)
    inside = lazy.no_grad(lambda: ((weight * 2).requires_grad, lazy.torch.is_grad_enabled()))
    assert inside() == (False, False) and (weight * 2).requires_grad and inside.__name__ == "<lambda>"


def test_a_rerun_of_a_complete_sweep_checks_nothing_that_will_not_run(tmp_path):
    """Every cell finished with the same hash: the rerun imports neither torch nor diffusers to check weights and
    schedulers no cell will use. A cell whose image went missing since is checked and made again."""
    sweep = ["-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1", "hydra.sweep.dir=s"]
    first = entry_in_a_new_process(sweep, tmp_path, ("diffusers",))
    assert first.stdout.strip().splitlines()[-1] == "exit 0 ['diffusers']", first.stdout[-2000:] + first.stderr[-2000:]
    again = entry_in_a_new_process(sweep, tmp_path, ("torch", "diffusers"))
    assert again.stdout.strip().splitlines()[-1] == "exit 0 []", again.stdout[-2000:] + again.stderr[-2000:]
    assert "; 2 finished before: not run again" in again.stdout and "results.csv: 2 ok, 0 failed" in again.stdout
    assert "Launching 0 jobs" not in again.stdout + again.stderr  # nothing to launch: no line saying so
    image = tmp_path / "s" / pd.read_csv(tmp_path / "s" / "results.csv")["image_path"].iloc[1]
    image.unlink()
    mended = entry_in_a_new_process(sweep, tmp_path, ("diffusers",))
    assert mended.stdout.strip().splitlines()[-1] == "exit 0 ['diffusers']", mended.stdout[-2000:] + mended.stderr[-2000:]
    assert "; 1 finished before: not run again" in mended.stdout and image.is_file()


def test_a_cell_of_a_complete_sweep_whose_files_went_is_checked_before_it_runs_again(run_sdlab, tmp_path, monkeypatch,
                                                                                   capsys):
    """The rerun skips the pre-flight of cells recorded finished; one whose image went since runs again, so it is
    checked first: a refusal is one line and exit code 2, and the sweep's folder is free for the next command."""
    import hydra_plugins.sdlab_hydra.compose_once as compose_once

    monkeypatch.chdir(tmp_path)
    sweep = ("-m", "seed=1,2", "model=tiny", *FAST, "hydra.sweep.dir=s")
    assert run_sdlab(*sweep) == 0
    (tmp_path / "s" / pd.read_csv(tmp_path / "s" / "results.csv")["image_path"].iloc[1]).unlink()
    capsys.readouterr()

    def weights_gone(run):
        raise UserError("model=tiny: its weights went")

    with monkeypatch.context() as patched:
        patched.setattr(compose_once, "check_job", weights_gone)
        assert run_sdlab(*sweep) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sdlab: error: model=tiny: its weights went"
    assert run_sdlab(*sweep) == 0
    assert "; 1 finished before: not run again" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["guidance_scale=abc"], ["model=sd15"], ["model=sd15", "model.path=absent"]])
def test_a_refusal_before_any_work_imports_neither_torch_nor_diffusers(tmp_path, args):
    """A bad value and missing weights are answered before the libraries a job needs (or the hub client) are imported."""
    result = entry_in_a_new_process(args, tmp_path, ("torch", "diffusers", "huggingface_hub"),
                                    HF_HOME=str(tmp_path / "hf"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.count("sdlab: error:") == 1


@pytest.mark.parametrize("args", [
    ["experiment=trajectory", "frames=0"], ["experiment=forward_process", "spaces=3"],
    ["experiment=compare_schedulers_quick", "compare.steps=0"], ["experiment=clip_tokens", "prompts=[]"],
    ["experiment=guidance_grid", "guidance_scales=[abc]"], ["experiment=article_a2_noise", "noise.size=0"],
    ["experiment=schedule_families", "families=[{config: sd15, stepz: 4}]"],
    ["experiment=schedule_snr", "visit_schedulers=[{name: eulr}]"],
    ["experiment=schedule_families", "families=[{config: sd15, sampler: dpm++_2m}]"],
    ["experiment=schedule_families", "families=[{config: {beta_schedule: linear, beta_start: x}}]"],
    # values only a job's own check can judge
    ["experiment=article_c1_pipeline_by_hand", "guidance_scale=1"], ["experiment=forward_process", "timesteps=[5000]"],
    ["experiment=article_a3_schedule", "report_timesteps=[5000]"], ["experiment=article_c2_img2img", "image=/nope.png"],
    ["experiment=article_f2_distance_nfe", "clip=none"], ["experiment=train_mini", "train.unet.init_from=/nope"],
    ["experiment=train_mini_flow", "train.flow.frozen_from=/nope"]])
def test_a_bad_recipe_value_is_answered_before_torch_and_the_scheduler_checks_import_diffusers(tmp_path, args):
    """A recipe's values, and a job's own check, are read before torch (2 s) and the schedulers (whose classes come
    from diffusers) are imported: a job's module reads torch only when its job runs."""
    result = entry_in_a_new_process(args, tmp_path, ("torch", "diffusers", "huggingface_hub"),
                                    HF_HOME=str(tmp_path / "hf"))
    assert result.stdout.strip().splitlines()[-1] == "exit 2 []", result.stdout + result.stderr
    assert result.stderr.count("sdlab: error:") == 1


def test_version_names_sdlab_and_its_libraries(tmp_path):
    result = run_cli("--version", cwd=tmp_path, env=bare_env())
    assert result.returncode == 0
    assert result.stdout.startswith("sdlab 0.") and "torch 2." in result.stdout and "diffusers" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["-m", "seed=1,2", "model=tiny", "plan=true"]])
def test_a_reader_that_stops_early_ends_the_output_quietly(tmp_path, args):
    """`sdlab --help | head -1`: the reader gone, the page ends without a BrokenPipeError traceback."""
    process = subprocess.Popen([*SDLAB, *args], cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # gone before the first line: every write meets a closed pipe
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 1 and err == "", err[-2000:]


@pytest.mark.parametrize("args,code", [(["--version"], 0), (["guidance_scale=abc"], 2)])
def test_python_m_sdlab_is_the_sdlab_command(tmp_path, args, code):
    """`python -m sdlab` answers as the console script `sdlab` does: the same output and exit code."""
    console_script = run_cli(*args, cwd=tmp_path, command=(str(Path(sys.executable).with_name("sdlab")),))
    module = run_cli(*args, cwd=tmp_path, command=(sys.executable, "-m", "sdlab"))
    assert (module.returncode, module.stdout, module.stderr) == (code, console_script.stdout, console_script.stderr)
    if code:
        assert module.stderr.startswith("sdlab: error: guidance_scale=") and module.stderr.count("\n") == 1
    else:
        assert module.stdout.startswith("sdlab 0.") and module.stderr == ""


def test_bash_completion_installs_and_completes(tmp_path):
    install = run_cli("-sc", "install=bash", cwd=tmp_path, env=bare_env())
    assert install.returncode == 0, install.stderr
    assert "complete" in install.stdout and "hydra_bash_completion" in install.stdout
    query = run_cli("-sc", "query=bash", cwd=tmp_path, env=bare_env(COMP_LINE="sdlab sched", COMP_POINT="11"))
    assert query.returncode == 0 and "scheduler=" in query.stdout, query.stdout + query.stderr


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_a_kill_is_one_line_and_leaves_no_lock(tmp_path, sig, code, word):
    """Ctrl-C, and SIGTERM (`kill`, a batch scheduler's time limit), end the run with one line, its lock released."""
    process = subprocess.Popen([*SDLAB, "seeds=[1,2,3,4,5,6,7,8]", "batch_size=1", "num_inference_steps=50",
                                "threads=1", "hydra.run.dir=run"], cwd=tmp_path, env=bare_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a shell starts background jobs with Ctrl-C ignored, and a child inherits that
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while not (tmp_path / "run" / "cli.log").is_file() or "loaded model" not in (tmp_path / "run" / "cli.log").read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    lines = [line for line in err.splitlines() if line.strip() and "denoising" not in line]
    assert lines[-1] == f"sdlab: error: {word}; rerun the same command to resume", err
    assert "Traceback" not in err and not (tmp_path / "run" / ".sdlab.lock").exists()


def test_ctrl_c_kills_a_loky_worker_left_in_the_process(run_sdlab, tmp_path, monkeypatch, capsys):
    """A joblib sweep's loky worker has no Popen.kill: Ctrl-C met one alive and ended in an AttributeError traceback."""
    from joblib.externals.loky.backend.process import LokyProcess

    from hydra_plugins.sdlab_hydra import compose_once

    def interrupted(run):
        raise KeyboardInterrupt

    worker = LokyProcess(target=time.sleep, args=(60,))
    worker.start()
    monkeypatch.setattr(compose_once, "check_job", interrupted)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    assert run_sdlab("-m", "seed=1,2", "model=tiny", "threads=1", f"hydra.sweep.dir={tmp_path / 's'}") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sdlab: error: interrupted; nothing was written"
    worker.join(10)
    assert not worker.is_alive()


def test_ctrl_c_before_a_sweep_wrote_its_folder_names_no_folder_to_resume_in(run_sdlab, tmp_path, monkeypatch,
                                                                              capsys):
    """Interrupted in pre-flight, a new sweep has no folder: the line must not send its user to one."""
    from hydra_plugins.sdlab_hydra import compose_once

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(compose_once, "check_job", interrupted)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    assert run_sdlab("-m", "seed=1,2", "model=tiny", "threads=1", f"hydra.sweep.dir={tmp_path / 's'}") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sdlab: error: interrupted; nothing was written"
    assert not (tmp_path / "s").exists()


def test_ctrl_c_ends_every_worker_process_the_sweep_started(run_sdlab, tmp_path, monkeypatch, capsys):
    """A launcher's worker that no job has reached (Ctrl-C before joblib's pool could abort) does not idle on after
    the sweep, holding its output: the interrupted sweep ends its worker processes as it exits."""
    import multiprocessing
    import time

    from hydra_plugins.sdlab_hydra import compose_once

    started = []

    def interrupted(run):
        worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=False)
        worker.start()  # as a pool starts its workers
        started.append(worker)
        raise KeyboardInterrupt

    monkeypatch.setattr(compose_once, "check_job", interrupted)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    assert run_sdlab("-m", "seed=1,2", "model=tiny", "threads=1", f"hydra.sweep.dir={tmp_path / 's'}") == 130
    worker = started[0]
    worker.join(timeout=5)
    assert worker.exitcode is not None, "the worker outlived the sweep"
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sdlab: error: interrupted; nothing was written"


INTERRUPTED_IMPORT = """
import builtins, runpy, sys
real = builtins.__import__
def interrupted(name, *args, **kwargs):
    if name == "hydra":  # Ctrl-C as sdlab loads its libraries, its first second
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupted
sys.argv = ["sdlab", "hydra.run.dir=run"]
runpy.run_module("sdlab.app.cli", run_name="__main__")
"""


def test_ctrl_c_while_sdlab_starts_is_one_line_and_exit_130(tmp_path):
    """Not an import's traceback and the signal's own exit code: the one line and 130 of a later Ctrl-C."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], cwd=tmp_path, capture_output=True, text=True,
                          env=bare_env(PYTHONPATH=str(ROOT)), timeout=60)
    assert (done.returncode, done.stderr) == (130, "sdlab: error: interrupted while starting; nothing was written\n")
    assert not list(tmp_path.iterdir())


def test_prepare_leaves_hydra_flags_and_quoted_values_alone():
    assert prepare(["--cfg", "job", "prompt='a','b'", "seed=1"]) == ["--cfg", "job", "prompt='a','b'", "seed=1"]
    assert prepare(["prompt=a, b"]) == ["prompt='a, b'"]


def test_glob_sweeps_every_scheduler_that_fits_the_model(run_sdlab, tmp_path, monkeypatch, capsys):
    """`scheduler=glob(*)` is the group's real options (no `_` helper files): all of them on a DDPM model; on Flux
    those with a flow solver that follows its dynamic shift, the others named and skipped."""
    import pandas as pd

    from sdlab.models.schedulers import fitting

    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "scheduler=glob(*)", "model=tiny", "num_inference_steps=1", "threads=1",
                     "hydra.sweep.dir=s") == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert sorted(table["scheduler"]) == sorted(fitting("epsilon")) and (table["status"] == "ok").all()
    assert len(table) == 18 and "skipping" not in out
    assert run_sdlab("-m", "scheduler=glob(*)", "model=flux_tiny", "num_inference_steps=1", "threads=1",
                     "hydra.sweep.dir=f") == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "f" / "results.csv")
    assert sorted(table["scheduler"]) == ["ddim", "dpmpp_2m", "euler", "unipc"] and (table["status"] == "ok").all()
    assert "sdlab: skipping 14 of 18 cells their model cannot run: scheduler=ddpm, " in out


def test_a_sweep_runs_the_cells_whose_model_fits_and_names_the_others(run_sdlab, tmp_path, monkeypatch, capsys):
    """Across model kinds, a sampler with no solver for the model skips only that cell; a sweep where no cell can run is refused."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "model=tiny,sd3_tiny", "scheduler=euler,lms", "num_inference_steps=1",
                     "threads=1", "hydra.sweep.dir=s") == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert sorted(zip(table["model"], table["scheduler"])) == [("sd3_tiny", "euler"), ("tiny", "euler"),
                                                              ("tiny", "lms")]
    assert "skipping 1 of 4 cells their model cannot run: model=sd3_tiny scheduler=lms (" in out
    assert out.rstrip().endswith("open: s/grid.png, s/summary.png, s/report.html")  # what to look at next
    assert run_sdlab("-m", "model=sd3_tiny", "scheduler=lms,pndm", "hydra.sweep.dir=t", *FAST) == 2
    assert "does not fit a model of kind 'flow'" in one_error_line(capsys)
    assert not (tmp_path / "t").exists()


def test_an_unknown_key_lists_the_main_keys_not_every_recipe_internal(run_sdlab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("steps=20") == 2
    line = one_error_line(capsys)
    assert "did you mean num_inference_steps?" in line and "the main keys are: batch_size, eta, guidance_scale" in line
    assert "compare" not in line and "visit_schedulers" not in line  # recipe blocks are named by --cfg job


def test_a_row_shows_the_options_its_scheduler_reads():
    """A ddim row built from mini's dpmpp_2m config carries none of the keys diffusers keeps for the other class."""
    import json

    from sdlab.models.loading import shipped_scheduler_config
    from sdlab.models.schedulers import make_scheduler, resolved_config
    from sdlab.config import ModelSpec

    base, _ = shipped_scheduler_config(ModelSpec("mini", resolution=64))
    assert base["_class_name"] == "DPMSolverMultistepScheduler" and "algorithm_type" in base
    shown = json.loads(resolved_config(make_scheduler("ddim", base)))
    assert shown["class"] == "DDIMScheduler" and "algorithm_type" not in shown and "solver_order" not in shown
    assert shown["beta_schedule"] == base["beta_schedule"]  # the model's own schedule is still there


def test_the_sde_sampler_runs_without_torchsde_warnings(run_sdlab, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("scheduler=dpmpp_sde", "num_inference_steps=8", "threads=1") == 0  # mini warned 1 in 8 steps
    assert not [w for w in recwarn if "Should have ta>=t0" in str(w.message)]


def test_rerunning_a_sweep_without_a_sweep_dir_continues_its_folder(run_sdlab, tmp_path, monkeypatch, capsys):
    """The same command finds its earlier folder by the manifest (not the timestamp); another command starts anew."""
    import json

    import pandas as pd

    monkeypatch.chdir(tmp_path)
    sweep = ("-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1")
    assert run_sdlab(*sweep) == 0
    [folder] = (tmp_path / "outputs" / "generate").iterdir()
    assert json.loads((folder / "sweep.json").read_text())["complete"] is True
    # the manifest names each cell by the hash its finished job records, before any job runs
    assert json.loads((folder / "sweep.json").read_text())["hashes"] == [
        json.loads((folder / job / "job.json").read_text())["job_hash"] for job in ("0", "1")]
    # as if interrupted before the second cell finished: its rows gone, the sweep not complete
    manifest = json.loads((folder / "sweep.json").read_text())
    (folder / "sweep.json").write_text(json.dumps({**manifest, "complete": False}))
    for name in ("results.parquet", "results.csv", "job.json"):
        (folder / "1" / name).unlink()
    capsys.readouterr()
    assert run_sdlab(*sweep) == 0
    out = capsys.readouterr().out
    assert f"sdlab: this sweep continues in outputs/generate/{folder.name} " in out
    assert "sdlab: 2 jobs, 2 images -> " in out and "; 1 finished before: not run again" in out  # cell 0 is not run
    assert list((tmp_path / "outputs" / "generate").iterdir()) == [folder]
    assert sorted(pd.read_csv(folder / "results.csv")["seed"]) == [1, 2]
    assert run_sdlab(*sweep) == 0
    assert f"sdlab: this sweep finished before in outputs/generate/{folder.name} " in capsys.readouterr().out
    assert run_sdlab("-m", "seed=1,3", "model=tiny", "num_inference_steps=1", "threads=1") == 0
    assert len(list((tmp_path / "outputs" / "generate").iterdir())) == 2  # another command, another folder




def test_a_sweep_killed_before_its_manifest_is_resumed_into_by_the_next_sweep(run_sdlab, tmp_path, monkeypatch,
                                                                                capsys):
    """A kill between the sweep folder's lock and its manifest leaves a folder where nothing ran, with a dead lock: the
    next sweep without a folder of its own runs in it with no error; a folder a live sdlab holds, and an empty one
    (another sweep may be between its mkdir and its lock), are left alone."""
    import socket

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs" / "generate"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = subprocess.Popen(["sleep", "300"])
    try:
        orphan, live = root / "multirun_2026-12-05_03-47-30", root / "multirun_2026-12-05_03-47-31"
        for folder, pid in ((orphan, gone.pid), (live, holder.pid)):
            folder.mkdir(parents=True)
            (folder / ".sdlab.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        empty = root / "multirun_2026-12-05_03-47-29"
        empty.mkdir()
        sweep = ("-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1")
        assert run_sdlab(*sweep) == 0
        captured = capsys.readouterr()
        assert f"sdlab: this sweep continues in outputs/generate/{orphan.name} " in captured.out
        assert "error" not in captured.err
        assert sorted(pd.read_csv(orphan / "results.csv")["seed"]) == [1, 2]
        assert list(empty.iterdir()) == [] and sorted(p.name for p in live.iterdir()) == [".sdlab.lock"]
        assert run_sdlab("-m", "seed=3", *sweep[2:]) == 0  # another sweep: a folder of its own
        assert len(list(root.iterdir())) == 4
        assert run_sdlab(*sweep) == 0  # the rerun finds its own folder by its manifest
        assert f"sdlab: this sweep finished before in outputs/generate/{orphan.name} " in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()


class SameSecond(datetime.datetime):
    """A clock stopped at one second, for Hydra's `${now:}` and sdlab's sweep folder alike."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 5, 3, 47, 32)


def test_two_sweeps_started_in_the_same_second_get_a_folder_each(run_sdlab, tmp_path, monkeypatch):
    """The default folder is named by the second a sweep starts: another sweep started in that second (a script's
    next command after a fast one) went into the first one's folder, its job 1 replacing the first sweep's."""
    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    monkeypatch.setattr(arguments, "datetime", SameSecond, raising=False)
    monkeypatch.chdir(tmp_path)
    fast = ("model=tiny", "num_inference_steps=1", "threads=1")
    assert run_sdlab("-m", "seed=1,2", *fast) == 0
    assert run_sdlab("-m", "seed=3,4", *fast) == 0
    folders = sorted((tmp_path / "outputs" / "generate").iterdir())
    assert [f.name for f in folders] == ["multirun_2026-12-05_03-47-32", "multirun_2026-12-05_03-47-32_2"]
    assert [sorted(pd.read_csv(f / "results.csv")["seed"]) for f in folders] == [[1, 2], [3, 4]]
    assert run_sdlab("-m", "seed=1,2", *fast) == 0  # a rerun still finds its own folder, not a third
    assert len(list((tmp_path / "outputs" / "generate").iterdir())) == 2


def test_a_run_whose_default_folder_is_taken_in_the_same_second_gets_the_next_name(run_sdlab, tmp_path, monkeypatch,
                                                                                   capsys):
    """A run's default folder is named by the second it starts: another sdlab that started in that second holds it, or
    one that ended in it left its results there. The user chose no folder, so the run takes the next free name and
    leaves the other's alone; a folder the user names is refused as before (test_dir_safety)."""
    import socket

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    monkeypatch.chdir(tmp_path)
    fast = ("model=tiny", "num_inference_steps=1", "threads=1")
    root = tmp_path / "outputs" / "generate"
    held = root / "2026-12-05_03-47-32"
    holder = subprocess.Popen(["sleep", "300"])
    try:
        held.mkdir(parents=True)
        (held / ".sdlab.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        capsys.readouterr()
        assert run_sdlab("seed=1", *fast) == 0
        assert f"generate/{held.name}_2/results.csv" in "".join(capsys.readouterr())
        assert run_sdlab("seed=2", *fast) == 0  # the second one has ended: its folder is taken all the same
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in root.iterdir()) == [held.name, f"{held.name}_2", f"{held.name}_3"]
    assert sorted(p.name for p in held.iterdir()) == [".sdlab.lock"]
    assert [pd.read_csv(root / f"{held.name}_{n}" / "results.csv")["seed"].tolist() for n in (2, 3)] == [[1], [2]]


def test_a_sweep_whose_default_folder_is_taken_after_its_pre_flight_moves_every_job_to_the_next_name(
        run_sdlab, tmp_path, monkeypatch, capsys):
    """Another sweep started in the same second makes the default folder between this one's pre-flight and its lock:
    this one takes the next name, and its jobs, table and report go there, none into the other's folder."""
    import socket

    from hydra_plugins.sdlab_hydra.compose_once import ComposeOnceSweeper

    monkeypatch.setattr(hydra.core.utils, "datetime", SameSecond)
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "outputs" / "generate" / "multirun_2026-12-05_03-47-32"
    holder = subprocess.Popen(["sleep", "300"])
    check_dirs = ComposeOnceSweeper.check_dirs

    def other_sweep_starts(self, sweep_dir, composed):
        checked = check_dirs(self, sweep_dir, composed)
        if not other.exists():
            other.mkdir(parents=True)
            (other / ".sdlab.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        return checked

    monkeypatch.setattr(ComposeOnceSweeper, "check_dirs", other_sweep_starts)
    try:
        capsys.readouterr()
        assert run_sdlab("-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1") == 0
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in other.iterdir()) == [".sdlab.lock"]
    moved = other.with_name(f"{other.name}_2")
    assert sorted(pd.read_csv(moved / "results.csv")["seed"]) == [1, 2]
    assert sorted(p.name for p in moved.iterdir() if p.is_dir()) == ["0", "1"]
    assert f"sdlab: outputs/generate/{moved.name}/results.csv: 2 ok" in capsys.readouterr().out

def test_a_refused_run_on_the_default_folder_leaves_nothing(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("guidance_scale=abc", "model=tiny", "threads=1") == 2
    assert run_sdlab("seed=-1", "model=tiny", "threads=1") == 2
    assert not (tmp_path / "outputs").exists()

INTERRUPTED_IN_A_POOL = """
import sys, threading
from concurrent.futures import ThreadPoolExecutor
from sdlab.app import cli

never = threading.Event()
ThreadPoolExecutor(1).submit(never.wait)  # a worker that an exit joining its pool would wait for forever


def interrupted(cfg):
    raise KeyboardInterrupt


cli.run = interrupted
sys.argv = ["sdlab", "hydra.run.dir=run"]
cli.entry()
"""


def test_ctrl_c_exits_even_when_a_worker_pool_would_never_finish(tmp_path):
    env = bare_env(PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IN_A_POOL], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "sdlab: error: interrupted; rerun the same command to resume"


@pytest.mark.parametrize("recipe", ["article_a2_noise", "article_b2_toy_predictor", "article_b4_vae_compression",
                                    "article_b5_cfg_toy", "article_b6_ddim_steps", "article_d2_timestep_embedding"])
def test_an_explainer_that_runs_no_network_imports_no_torch(tmp_path, recipe):
    """The numpy toys of the articles start in about a second less without torch (B3's toy U-Net needs it)."""
    result = entry_in_a_new_process([f"experiment={recipe}", "hydra.run.dir=run"], tmp_path,
                                    ("torch", "diffusers", "transformers"))
    assert result.stdout.strip().splitlines()[-1] == "exit 0 []", result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "run" / "results.csv").is_file() and "Traceback" not in result.stderr


def test_help_never_cuts_a_description_at_a_line_break_of_its_comment():
    """A key's or an option's comment that goes on over more lines is shown whole, or cut at a word and marked
    `...`: `scorers ... and the` or `sdxl_arch ... architecture with` left the reader mid-sentence."""
    shown = {line.split()[0]: line.split(None, 1)[1] for line in help_text().splitlines()
             if line.startswith("  ") and len(line.split()) > 1}
    conf = ROOT / "conf"
    lines = (conf / "config.yaml").read_text().splitlines()
    continued = {line.split(":")[0] for line, after in zip(lines, lines[1:])
                 if line[:1].isalpha() and "#" in line and after.lstrip().startswith("#   ")}
    for group in ("model", "clip", "experiment"):
        for path in (conf / group).glob("*.yaml"):
            comments = [line for line in path.read_text().splitlines() if "@package" not in line][:2]
            if all(c.startswith("# ") and not c.startswith("#  ") for c in comments):
                continued.add(path.stem)
    assert {"scorers", "sdxl_arch"} <= continued
    cut = {name: shown[name] for name in continued if name in shown and not shown[name].endswith("...")}
    assert not cut, cut


def test_a_library_warning_during_a_job_lands_in_the_jobs_log(tmp_path):
    """Python warnings go through logging: the job's log keeps them, not only the console."""
    code = ("import sys, warnings; from sdlab.jobs import generate; real = generate.generate_batch\n"
            "def warned(*args, **kwargs):\n"
            "    warnings.warn('a library had a word to say', UserWarning)\n"
            "    return real(*args, **kwargs)\n"
            "generate.generate_batch = warned\n"
            "sys.argv = ['sdlab', 'model=tiny', 'num_inference_steps=1', 'threads=1', 'hydra.run.dir=run']\n"
            "from sdlab.app.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "run" / "cli.log").read_text()
    assert "[WARNING] UserWarning: a library had a word to say (<string>:3)\n" in log, log


def test_every_line_of_a_sweeps_console_is_in_one_format(tmp_path):
    """Lines logged before the first job (pre-flight warnings, the model loading) read like the job's own: time and
    level, not Hydra's stamp, which made `[HYDRA] loaded model mini` look like Hydra's doing."""
    done = run_cli("-m", "prompt=a cat", "seed=1,2", "model=mini", "num_inference_steps=1", "threads=1",
                   "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert any("is outside model=mini's shapes grammar" in line for line in logged), done.stdout
    assert any("loaded model mini" in line for line in logged), done.stdout
    stamp = re.compile(r"\[\d\d:\d\d:\d\d\]\[(INFO|WARNING)\] ")
    assert all(stamp.match(line) for line in logged), done.stdout
    assert re.match(r"\[\d\d:\d\d:\d\d\]\[WARNING\] prompt='a cat' is outside", logged[0]), done.stdout


def test_a_logs_level_and_format_may_still_be_set(tmp_path):
    """What the logging overrides leave: levels and formats, the console's and the file's."""
    done = run_cli("model=tiny", "num_inference_steps=1", "threads=1", "hydra.run.dir=run",
                   "+hydra.job_logging.handlers.console.level=WARNING", "hydra.job_logging.formatters.simple.format='%(message)s'",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "loaded model tiny" not in done.stdout and (tmp_path / "run" / "cli.log").read_text().startswith("loaded model tiny")


@pytest.mark.parametrize("args,fragment", [
    (["-m", "guidance_scale=1,abc"], "guidance_scale='abc' is not a number"),
    (["-m", "seed=1,-1"], "seed=-1"),
    (["-m", "num_inference_steps=2,0"], "num_inference_steps=0"),
])
def test_a_bad_value_in_a_later_cell_is_refused_before_any_cell_is_checked_for_files(tmp_path, args, fragment):
    """Every cell's values are typed before any cell's model and schedulers are checked (which imports torch and
    diffusers): `-m guidance_scale=1,abc` took 4-6 s to say what `guidance_scale=abc` says in under one."""
    done = entry_in_a_new_process(args, tmp_path, ("torch", "diffusers"))
    assert done.stdout.splitlines()[-1] == "exit 2 []", done.stdout + done.stderr
    assert fragment in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
