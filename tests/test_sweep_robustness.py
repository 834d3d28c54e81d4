"""Sweeps that survive: resume, SIGKILL at any moment, failure isolation, bad-output detection."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from sdlab.bench.records import write_table
from sdlab.bench.resume import sweep_cells
from sdlab.models import generate

SWEEP = ("-m", "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=2", "threads=1")


def test_rerun_skips_complete_cells_and_resume_false_recomputes(run_sdlab, tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}"
    assert run_sdlab(*SWEEP, sweep) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    assert run_sdlab(*SWEEP, sweep) == 0
    again = pd.read_parquet(tmp_path / "results.parquet")
    assert list(again["run_id"]) == list(first["run_id"])  # nothing recomputed
    (tmp_path / first["image_path"][0]).unlink()  # one incomplete cell
    assert run_sdlab(*SWEEP, sweep) == 0
    third = pd.read_parquet(tmp_path / "results.parquet")
    changed = [a != b for a, b in zip(first["run_id"], third["run_id"])]
    assert changed == [True, False, False, False]
    assert run_sdlab(*SWEEP, sweep, "resume=false") == 0
    fresh = pd.read_parquet(tmp_path / "results.parquet")
    assert not set(fresh["run_id"]) & set(third["run_id"])
    assert len(fresh) == 4


def test_a_model_setting_that_changes_the_image_is_its_own_cell(run_sdlab, tmp_path, capsys):
    """model.dtype decides the image: a bfloat16 cell is made, not taken from the float32 (auto) cell of its seed; the
    plan counts it to make, and a default run keeps the hash it always had."""
    sweep = ("-m", "model.dtype=auto,bfloat16", "model=tiny", "num_inference_steps=2", "threads=1",
             f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab(*sweep, "plan=true") == 0
    assert "2 cells, 0 already done, 2 to run (2 images)" in capsys.readouterr().out
    assert run_sdlab(*sweep) == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["ok", "ok"] and frame["config_hash"].nunique() == 2
    images = [np.asarray(Image.open(tmp_path / path), dtype=int) for path in frame["image_path"]]
    assert np.abs(images[0] - images[1]).max() > 0  # bfloat16 did make its own image
    assert run_sdlab("model=tiny", "num_inference_steps=2", "threads=1", f"hydra.run.dir={tmp_path / 'one'}") == 0
    assert pd.read_parquet(tmp_path / "one" / "results.parquet")["config_hash"].iloc[0] == frame["config_hash"].iloc[0]


def test_cells_inside_a_job_resume_per_seed(run_sdlab, tmp_path):
    args = ("seeds=[1,2,3]", "batch_size=1", "num_inference_steps=2", "threads=1", f"hydra.run.dir={tmp_path}")
    assert run_sdlab(*args) == 0
    first = pd.read_parquet(tmp_path / "results.parquet")
    next((tmp_path / "images").glob("seed2-*.png")).unlink()
    (tmp_path / "job.json").unlink()  # as if killed before the job finished
    assert run_sdlab(*args) == 0
    second = pd.read_parquet(tmp_path / "results.parquet")
    assert second["seed"].tolist() == [1, 2, 3]
    assert (second["run_id"] == first["run_id"]).tolist() == [True, False, True]


def test_a_rerun_after_the_weights_changed_makes_the_cells_again(run_sdlab, tmp_path, capsys):
    """A cell is finished only for the weights it was made from: new weights in the same folder make each cell again
    in its place (loaded again in the same process), while the same bytes with new file times are left alone."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "weights"
    shutil.copytree(ROOT / "models" / "mini", weights)
    args = ("-m", "seed=1,2", f"model.path={weights}", *SWEEP[3:], f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert run_sdlab(*args) == 0
    first = pd.read_parquet(tmp_path / "sweep" / "results.parquet")
    for file in weights.rglob("*.safetensors"):
        os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    assert run_sdlab(*args) == 0
    touched = pd.read_parquet(tmp_path / "sweep" / "results.parquet")
    assert list(touched["run_id"]) == list(first["run_id"])  # the same bytes: nothing recomputed
    old_pixels = [torch.tensor(np.asarray(Image.open(tmp_path / "sweep" / path)), dtype=torch.float32)
                  for path in first["image_path"]]
    unet = weights / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(unet)
    tensors["conv_out.bias"] = tensors["conv_out.bias"] + 0.5
    save_file(tensors, unet, metadata={"format": "pt"})
    capsys.readouterr()
    assert run_sdlab(*args) == 0
    assert "sdlab: 2 jobs, 2 images -> " in (out := capsys.readouterr().out)
    assert out.count("; 2 made from weights that changed since: made again") == 1 and "finished before" not in out
    logs = sorted((tmp_path / "sweep").glob("*/cli.log"))
    assert len(logs) == 2 and all("resume: 1 image(s) here were made from weights that changed since (model=mini or "
                                  "the CLIP that scores it): made again" in log.read_text() for log in logs)  # and why
    retrained = pd.read_parquet(tmp_path / "sweep" / "results.parquet")
    assert not set(retrained["run_id"]) & set(first["run_id"])  # each cell made again, in place of the old one
    assert list(retrained["config_hash"]) == list(first["config_hash"])
    assert list(retrained["image_path"]) == list(first["image_path"])
    assert retrained["weights"].nunique() == 1 and retrained["weights"][0] != first["weights"][0]
    for path, pixels in zip(first["image_path"], old_pixels):
        now = torch.tensor(np.asarray(Image.open(tmp_path / "sweep" / path)), dtype=torch.float32)
        assert (now - pixels).abs().max() > 8  # made by the new weights, not the model loaded before


def sdlab_process(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "sdlab.app.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(condition, process, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_sigkill_at_three_moments_then_rerun_gives_every_cell_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", "guidance_scale=1,3,5,7.5", "seeds=[1,2,3]", "batch_size=1",  # 4 jobs x 3 seeds: 12 cells
            "num_inference_steps=3", "threads=1", f"hydra.sweep.dir={sweep}")
    pngs = lambda: list(sweep.glob("*/images/*.png"))  # noqa: E731
    moments = [
        lambda: len(pngs()) >= 1,  # inside the first job, after its first image
        lambda: (sweep / "1" / "results.parquet").is_file(),  # between jobs
        lambda: len(pngs()) >= 10,  # deep inside the third job
    ]
    for moment in moments:
        process = sdlab_process(*args, cwd=tmp_path)
        wait_for(moment, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    final = sdlab_process(*args, cwd=tmp_path)
    assert final.wait(timeout=600) == 0
    frame = pd.read_parquet(sweep / "results.parquet")
    assert pd.read_csv(sweep / "results.csv").shape == frame.shape
    cells = list(zip(frame["overrides"], frame["seed"]))
    assert len(frame) == 12 and len(set(cells)) == 12
    assert (frame["status"] == "ok").all()
    for path in frame["image_path"]:
        Image.open(sweep / path).load()  # a truncated PNG raises here
    for table in sweep.rglob("results.parquet"):
        pd.read_parquet(table)
    assert not list(sweep.rglob(".*.sdlab-tmp*"))


def test_failing_cell_is_a_row_and_the_sweep_goes_on(run_sdlab, tmp_path, capsys, monkeypatch):
    from sdlab.jobs import generate as generate_job

    real = generate_job.generate_batch

    def out_of_memory_for_seed_2(model, params, seeds, **options):
        if 2 in seeds:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, params, seeds, **options)

    monkeypatch.setattr(generate_job, "generate_batch", out_of_memory_for_seed_2)
    code = run_sdlab("-m", "seed=1,2,3", "num_inference_steps=2", "threads=1", f"hydra.sweep.dir={tmp_path}")
    assert code == 1
    frame = pd.read_csv(tmp_path / "results.csv")
    assert frame["status"].tolist() == ["ok", "error", "ok"]
    assert "out of memory" in frame["error"].iloc[1]
    out = capsys.readouterr().out
    assert "2 ok, 1 failed" in out and "seed=2" in out


def test_an_invalid_option_combination_stops_the_sweep_before_any_job(run_sdlab, tmp_path, capsys):
    code = run_sdlab("-m", "scheduler=euler,ddim", "scheduler.use_karras_sigmas=true", "num_inference_steps=2",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 2
    assert "scheduler 'ddim' has no option 'use_karras_sigmas'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_all_black_output_is_a_failed_row_not_an_image(run_sdlab, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(generate, "decode_latents", lambda model, latents: torch.zeros(len(latents), 3, 64, 64))
    code = run_sdlab("seeds=[1,2]", "num_inference_steps=2", "threads=1", f"hydra.run.dir={tmp_path}")
    assert code == 1
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert frame["status"].tolist() == ["error", "error"]
    assert frame["error"].str.contains("all-black").all()
    assert not list(tmp_path.rglob("*.png"))


def test_collector_skips_unfinished_job_dirs(tmp_path, caplog):
    from sdlab.bench.records import write_table
    from sdlab.bench.resume import collect

    (tmp_path / "0").mkdir()
    write_table(pd.DataFrame([{"run_id": "a", "seed": 1, "status": "ok", "image_path": "images/a.png"}]),
                tmp_path / "0")
    (tmp_path / "0" / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "0" / "images" / "a.png")  # the collector lists images on disk only
    (tmp_path / "1").mkdir()  # killed before writing its rows
    frame = collect(tmp_path)
    assert frame["image_path"].tolist() == ["0/images/a.png"]
    assert "unfinished" in caplog.text and "'1'" in caplog.text


def test_a_table_reads_back_as_pandas_reads_it(tmp_path):
    from sdlab.bench.records import read_table, rows, write_table

    frame = pd.DataFrame([
        {"run_id": "a", "status": "ok", "seed": 1, "clip_score": 31.5, "nsfw": False, "error": None, "scores": "{}"},
        {"run_id": "b", "status": "error", "seed": 2, "clip_score": float("nan"), "nsfw": True, "error": "boom",
         "scores": None},
    ])
    mixed = frame.assign(value=[1, "x"])  # an object column of two types is written as strings
    for table in (frame, mixed, frame[:0]):
        write_table(table, tmp_path)
        read = read_table(tmp_path)
        pd.testing.assert_frame_equal(read, pd.read_parquet(tmp_path / "results.parquet"), check_exact=True)
        assert len(read) == len(table) and list(read.columns) == list(table.columns)
        # its rows as pandas gives them: the same values, of the same Python types (NaN as NaN, None as None)
        records = read.to_dict("records")
        assert [{k: type(v) for k, v in r.items()} for r in rows(read)] == [{k: type(v) for k, v in r.items()}
                                                                            for r in records]
        pd.testing.assert_frame_equal(pd.DataFrame(rows(read), columns=read.columns),
                                      pd.DataFrame(records, columns=read.columns), check_exact=True)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_give_the_same_table_and_bit_identical_images(run_sdlab, tmp_path, launcher):
    # one image per call on both sides (sdlab's own launcher shares calls, within a level: tests/test_shared_calls.py)
    common = ("-m", "seed=1,2", "guidance_scale=1,7.5", "num_inference_steps=2", "threads=1", "batch_size=1")
    assert run_sdlab(*common, f"hydra.sweep.dir={tmp_path / 'basic'}") == 0
    assert run_sdlab(*common, f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / launcher}") == 0
    basic = pd.read_parquet(tmp_path / "basic" / "results.parquet")
    other = pd.read_parquet(tmp_path / launcher / "results.parquet")
    columns = ["seed", "guidance_scale", "scheduler", "nfe", "config_hash", "status", "image_path"]
    pd.testing.assert_frame_equal(basic[columns], other[columns])
    for path in basic["image_path"]:  # the PNGs also carry their rows, whose run_id and timings differ
        ours, theirs = Image.open(tmp_path / "basic" / path), Image.open(tmp_path / launcher / path)
        assert ours.tobytes() == theirs.tobytes() and ours.text["parameters"] == theirs.text["parameters"]


def test_a_submitit_sweep_without_a_sweep_dir_runs_in_the_default_one(run_sdlab, tmp_path, monkeypatch):
    """The README's `sdlab -m seed=1,2,3,4 hydra/launcher=submitit_local`: each task read the default sweep dir,
    `${now:...}`, before Hydra's resolvers were set up in its process, and every task failed with a traceback."""
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "hydra/launcher=submitit_local", "model=tiny", "num_inference_steps=2",
                     "threads=1") == 0
    [sweep] = tmp_path.glob("outputs/generate/multirun_*")  # the tasks' `now` is the sweep's: one folder
    assert pd.read_csv(sweep / "results.csv")["status"].tolist() == ["ok", "ok"]


def test_jobs_in_their_own_process_are_quiet_and_announced_as_they_finish(run_sdlab, tmp_path, capsys):
    """torchsde's float32 rounding warning (1 in 8 steps on mini at seed 0) stays silenced in a launcher's worker, and
    the sweep's own process says when each job is done instead of nothing until the last one."""
    assert run_sdlab("-m", "seed=0,1", "scheduler=dpmpp_sde", "num_inference_steps=8", "threads=1",
                     "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}") == 0
    logs = list(tmp_path.glob(".submitit/*/*_log.err"))
    assert logs and not [log for log in logs if "Should have ta>=t0" in log.read_text()]
    out = capsys.readouterr().out
    assert "sdlab: 1 of 2 cells done (" in out and "sdlab: 2 of 2 cells done (" in out


def test_a_job_that_ends_as_the_watch_stops_still_gets_its_progress_line(tmp_path, capsys):
    from sdlab.app.callbacks import FinishedJobs
    from sdlab.bench.resume import MARKER, write_manifest

    write_manifest(tmp_path, ["seed=1,2,3"], [["seed=1"], ["seed=2"], ["seed=3"]], finished=1)
    watch = FinishedJobs(tmp_path, since=time.time() - 1, every=60)  # it would not look again for a minute
    watch.start()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / MARKER).write_text(json.dumps({"job_hash": "h", "rows": 1, "gen_s": 0.5}))
    watch.stop()  # the sweep ended: the watch looks once more before it goes
    out = capsys.readouterr().out
    assert re.search(r"sdlab: 2 of 3 cells done \(1\), \d+\.\d\d images/s, about [\d.]+ s left", out), out


def test_sweep_of_different_jobs_collects_into_one_table(run_sdlab, tmp_path):
    code = run_sdlab("-m", "experiment=article_b3_unet_levels,article_b4_vae_compression", f"hydra.sweep.dir={tmp_path}")
    assert code == 0
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert set(frame["experiment"]) == {"article_b3_unet_levels", "article_b4_vae_compression"}
    assert pd.read_csv(tmp_path / "results.csv").shape[0] == len(frame)


def test_a_failing_collector_makes_the_sweep_fail(run_sdlab, tmp_path, monkeypatch, capsys):
    from sdlab.app import callbacks

    def broken(*_, **__):
        raise ValueError("disk full")

    monkeypatch.setattr(callbacks, "collect", broken)  # the sweep-level read, not the per-job write
    assert run_sdlab("-m", "seed=1,2", "num_inference_steps=2", "threads=1", f"hydra.sweep.dir={tmp_path}") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sdlab: error:")]
    assert len(errors) == 1 and errors[0].startswith("sdlab: error: collecting the sweep") and "disk full" in errors[0]
    assert "Traceback" not in err


def test_a_sweep_whose_cost_record_fails_still_ends_well_and_complete(run_sdlab, tmp_path, monkeypatch, capsys):
    from sdlab.app import callbacks
    from sdlab.bench.resume import read_manifest

    def broken(*_, **__):
        raise ValueError("cannot convert float NaN to integer")

    monkeypatch.setattr(callbacks, "record_cost", broken)  # what later plans read: no reason to fail a sweep
    assert run_sdlab("-m", "seed=1,2", "num_inference_steps=2", "threads=1", f"hydra.sweep.dir={tmp_path}") == 0
    captured = capsys.readouterr()
    warnings = [line for line in (captured.out + captured.err).splitlines() if "cost was not recorded" in line]
    assert len(warnings) == 1 and "NaN" in warnings[0] and "Traceback" not in captured.err, captured.err
    assert "2 ok, 0 failed" in captured.out, warnings
    assert read_manifest(tmp_path)["complete"] is True


class CountingLoader:
    """A stand-in for Hydra's config loader that counts compositions (every key a config group: none derived)."""

    calls = 0
    repository = type("EveryKeyAGroup", (), {"group_exists": staticmethod(lambda key: True)})()

    def load_sweep_config(self, master_config, sweep_overrides):
        from omegaconf import OmegaConf

        CountingLoader.calls += 1
        dirname = {"exclude_keys": [], "item_sep": ",", "kv_sep": "="}
        return OmegaConf.create({"overrides": list(sweep_overrides), "call": CountingLoader.calls,
                                 "hydra": {"overrides": {"task": []}, "job": {"config": {"override_dirname": dirname}}}})


def test_sweeper_hands_each_validated_config_to_the_launcher_once():
    import pickle

    from omegaconf import OmegaConf

    from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs

    master = OmegaConf.create({})
    composed = ComposedConfigs(CountingLoader(), limit=2)
    for overrides in (["seed=1"], ["seed=2"], ["seed=3"]):
        composed.compose(master, overrides)
    assert CountingLoader.calls == 3  # validation composes every job
    first = composed.load_sweep_config(master, ["seed=1"])
    assert first.overrides == ["seed=1"] and first.call == 1 and CountingLoader.calls == 3  # reused, not recomposed
    beyond = composed.load_sweep_config(master, ["seed=3"])  # beyond the limit: a copy of its validated config
    assert beyond.overrides == ["seed=3"] and beyond.call == 3 and CountingLoader.calls == 3
    again = composed.load_sweep_config(master, ["seed=1"])  # handed out once only: then a copy
    assert again is not first and again.call == 1 and CountingLoader.calls == 3
    restored = pickle.loads(pickle.dumps(composed))  # as a launcher ships it to worker processes
    assert composed._kept and not restored._kept
    assert restored.load_sweep_config(master, ["seed=2"]).call == 4  # a worker has no templates: Hydra composes


def test_jobs_differing_in_plain_values_get_exactly_the_config_hydra_composes():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.sdlab_hydra.compose_once import ComposedConfigs

    sweeps = [
        [[f"seed={seed}", f"guidance_scale={g}", f"scheduler={s}"] for s in ("ddim", "dpmpp_2m")
         for g in (1, 7.5) for seed in (1, 2)],
        [["model=tiny", "prompt='a red circle'", "seeds=[1,2]"], ["model=tiny", "prompt=a blue square", "seeds=[3]"]],
        [["experiment=guidance_grid", f"guidance_scales={v}"] for v in ("[1,7.5]", "[2]")],
        [[f"scheduler.timestep_spacing={t}", f"seed={i}"] for i, t in enumerate(("trailing", "leading"))],
        [[f"+extra={i}", "seed=1"] for i in (1, 2)],  # additions are composed afresh
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["hydra.sweep.dir=/tmp/x"], run_mode=RunMode.MULTIRUN)
        composed = ComposedConfigs(loader)
        full = []

        class Counting:
            repository = loader.repository

            def load_sweep_config(self, master_config, sweep_overrides):
                full.append(sweep_overrides)
                return loader.load_sweep_config(master_config, sweep_overrides)

        composed._loader = Counting()
        for sweep in sweeps:
            for overrides in sweep:
                composed.compose(master, overrides)
        for sweep in sweeps:
            for overrides in sweep:
                derived = OmegaConf.to_container(composed.load_sweep_config(master, overrides), resolve=False)
                expected = OmegaConf.to_container(loader.load_sweep_config(master, overrides), resolve=False)
                assert derived == expected, overrides
    assert len(full) == 2 + 1 + 1 + 1 + 2  # one per set of config-group choices, and each addition


PROBE_APP = '''
import json, logging, os
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from sdlab.app.cli import CONF_DIR, register_resolvers

def probe(cfg):
    hc = HydraConfig.get()
    logging.getLogger("probe").info("job %s sees seed %s", hc.job.num, cfg.seed)
    seen = {"cfg": OmegaConf.to_yaml(cfg, resolve=True), "struct": OmegaConf.is_struct(cfg), "cwd": os.getcwd(),
            "hydra": OmegaConf.to_yaml(hc, resolve=True), "env": os.environ.get("SDLAB_PROBE")}
    (Path(hc.runtime.output_dir) / "probe.json").write_text(json.dumps(seen))

register_resolvers()
hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(probe)()
'''


def test_lean_launcher_writes_and_passes_on_what_hydras_basic_launcher_does(tmp_path):
    app = tmp_path / "probe_app.py"
    app.write_text(PROBE_APP)
    sweep = ["-m", "seed=1,2", "scheduler=ddim,euler", "+hydra.job.env_set.SDLAB_PROBE=x", "~hydra.callbacks.collect"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    running = [subprocess.Popen([sys.executable, str(app), *sweep, f"hydra/launcher={launcher}",
                                 f"hydra.sweep.dir={tmp_path / launcher}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for launcher in ("sdlab", "basic")]  # side by side
    for process in running:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]

    def files(launcher: str) -> dict[str, str]:
        out = {}
        for path in sorted((tmp_path / launcher).rglob("*")):
            if path.is_file() and path.name != "multirun.yaml":
                text = path.read_text().replace(str(tmp_path / launcher), "SWEEP")
                text = text.replace("hydra_plugins.sdlab_hydra.lean_launcher.LeanLauncher",
                                    "hydra._internal.core_plugins.basic_launcher.BasicLauncher")
                text = re.sub(r"(\n|\\n) +ahead: true", "", text)  # the lean launcher's one option (in YAML and JSON)
                text = text.replace("hydra/launcher: sdlab", "hydra/launcher: basic").replace("launcher=sdlab", "launcher=basic")
                text = re.sub(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", "NOW", text)  # run.dir's ${now:...}
                if path.suffix == ".log":  # timestamps differ
                    text = "\n".join(line.split("]", 1)[-1] for line in text.splitlines())
                out[str(path.relative_to(tmp_path / launcher))] = text
        return out

    ours, hydras = files("sdlab"), files("basic")
    assert sorted(ours) == sorted(hydras) and len([k for k in ours if k.endswith("probe.json")]) == 4
    for name in ours:
        assert ours[name] == hydras[name], name
    assert '"env": "x"' in ours["3/probe.json"] and "sees seed 2" in ours["3/probe_app.log"]


def test_sdlabs_job_function_reads_its_composed_config_in_place_and_config_yaml_still_leaves_hydra_out(
        run_sdlab, tmp_path, monkeypatch):
    import yaml
    from omegaconf import OmegaConf

    from sdlab.app import cli

    copies, seen = [], []
    masked_copy, finish_job = OmegaConf.masked_copy, cli.finish_job
    monkeypatch.setattr(OmegaConf, "masked_copy", lambda *a, **k: copies.append(a[1]) or masked_copy(*a, **k))
    monkeypatch.setattr(cli, "finish_job", lambda ctx, cfg, *a: seen.append("hydra" in cfg) or finish_job(ctx, cfg, *a))
    assert run_sdlab(*SWEEP, "model=tiny", f"hydra.sweep.dir={tmp_path}") == 0
    assert copies == [] and seen == [True] * 4  # no copy of a job's config without its Hydra node
    for job in sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir()):
        written = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert "hydra" not in written and written["seed"] in (1, 2)
        assert yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"] == int(job.name)


def test_cells_finished_elsewhere_forget_an_image_deleted_since_the_last_look(run_sdlab, tmp_path):
    assert run_sdlab(*SWEEP, f"hydra.sweep.dir={tmp_path}") == 0
    table = pd.read_parquet(tmp_path / "results.parquet")
    before = sweep_cells(tmp_path, tmp_path, table["weights"][0])
    assert set(before) == set(table["config_hash"])
    gone = table.iloc[0]
    (tmp_path / gone["image_path"]).unlink()
    after = sweep_cells(tmp_path, tmp_path, table["weights"][0])
    assert set(after) == set(before) - {gone["config_hash"]}


def test_a_cell_whose_job_never_wrote_a_table_is_a_failed_row_the_report_can_read(tmp_path):
    from sdlab.bench.report import check_cells
    from sdlab.bench.resume import NOT_RUN, collect, write_manifest

    write_manifest(tmp_path, ["seed=1,2"], [["seed=1"], ["seed=2"]])
    (tmp_path / "1").mkdir()  # killed before writing its rows; job 0 never started
    frame = collect(tmp_path)
    assert frame["status"].tolist() == ["error", "error"] and (frame["error"] == NOT_RUN).all()
    assert [json.loads(cell) for cell in frame["overrides"]] == [{"seed": "1"}, {"seed": "2"}]
    check_cells(frame, tmp_path)


def test_a_cell_that_did_not_run_keeps_its_values_as_the_finished_ones_hold_them(tmp_path):
    """A sweep killed after its first job: the report's grid and table place each missing cell at its own values."""
    import shutil

    from report_helpers import fake_sweep
    from sdlab.bench.resume import NOT_RUN, collect

    sweep = fake_sweep(tmp_path / "sweep", seeds=(1, 2), guidance=(1.0, 7.5), schedulers=("ddim", "123"), failed=None)
    for job in range(1, 8):
        shutil.rmtree(sweep / str(job))  # killed before their jobs wrote a thing
    frame = collect(sweep)
    assert (frame["error"] == NOT_RUN).sum() == 7
    assert list(zip(frame["seed"], frame["guidance_scale"], frame["scheduler"])) == [
        (seed, g, s) for seed in (1, 2) for g in (1.0, 7.5) for s in ("ddim", "123")]
    write_table(frame, sweep)  # one type a column: the sweep's table is written whole


def test_job_dirs_named_by_their_values_keep_number_order_and_their_cells(tmp_path):
    """`hydra.sweep.subdir=${hydra.job.override_dirname}` names job dirs seed=0 ... seed=11: their rows come in number
    order (seed=2 before seed=10), each job dir is the cell its finished mark's hash names, none is a failed row."""
    from sdlab.bench.resume import collect, mark_finished, write_manifest

    hashes = [f"h{seed}" for seed in range(12)]
    write_manifest(tmp_path, ["seed=range(0,12)"], [[f"seed={seed}"] for seed in range(12)], hashes=hashes)
    for seed in range(12):
        job = tmp_path / f"seed={seed}"
        (job / "images").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(job / "images" / "a.png")
        write_table(pd.DataFrame([{"run_id": str(seed), "status": "ok", "image_path": "images/a.png"}]), job)
        mark_finished(job, hashes[seed], {"rows": 1})
    frame = collect(tmp_path)
    assert frame["status"].tolist() == ["ok"] * 12
    assert frame["run_id"].tolist() == [str(seed) for seed in range(12)]
    assert frame["seed"].astype(int).tolist() == list(range(12))  # each row given its cell's value


def test_job_config_files_hold_the_text_omegaconf_writes():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.sdlab_hydra.lean_launcher import job_files, yaml_text

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["hydra.sweep.dir=/tmp/x", "prompt='1e5'"],
                                           run_mode=RunMode.MULTIRUN)
    tricky = OmegaConf.create({"a": "yes", "b": "1.0", "c": "1", "d": "x: y", "e": [1, "on", None, "null", "Off"],
                               "f": "~", "g": "2020-01-01", "h": "it's", "i": "é", "j": "${a}", "k": 1e-5, "l": "1e5",
                               "m": ".inf", "n": "", "o": " lead", "p": "nan", "q": "1_000", "r": True, "s": "y"})
    for node in (master.hydra, OmegaConf.masked_copy(master, [k for k in master if k != "hydra"]), tricky):
        assert yaml_text(node) == OmegaConf.to_yaml(node)
        assert OmegaConf.create(yaml_text(node)) == OmegaConf.create(OmegaConf.to_yaml(node))
    assert job_files(master) == {  # each file from one plain copy of the whole config, as Hydra writes it from its parts
        "config.yaml": OmegaConf.to_yaml(OmegaConf.masked_copy(master, [k for k in master if k != "hydra"])),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.masked_copy(master, ["hydra"])),
        "overrides.yaml": OmegaConf.to_yaml(master.hydra.overrides.task)}


def test_a_mark_that_is_no_json_object_is_no_finished_job(tmp_path):
    from sdlab.bench.resume import MARKER, finished_job

    for text in ("[]", '"done"', "{oops"):
        (tmp_path / MARKER).write_text(text)  # a job dir's file is data: a damaged mark means not finished
        assert finished_job(tmp_path, "abc") is None


@pytest.mark.parametrize("rows", [1, 300])
def test_a_table_reads_back_as_written_and_its_csv_is_pandas_own(tmp_path, rows):
    """A job's one-row table and a sweep's long one: the same frame from Parquet, pandas' own CSV beside it."""
    frame = pd.DataFrame({"run_id": ["062414779754"] * rows, "prompt": [f"a red {i % 3}" for i in range(rows)],
                          "seed": np.arange(rows, dtype=np.int64), "clip_score": [0.1 * i for i in range(rows)],
                          "error": [None] * rows, "ok": [i % 2 == 0 for i in range(rows)],
                          "time_vae_s": [float("nan")] * rows, "note": ['say "hi", then\nleave'] * rows})
    write_table(frame, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results.parquet"), frame)
    frame.to_csv(tmp_path / "by_pandas.csv", index=False)
    assert (tmp_path / "results.csv").read_bytes() == (tmp_path / "by_pandas.csv").read_bytes()


def left_in_group(pgid: int, wait: float) -> list[int]:
    """The processes still in process group `pgid` once they had `wait` seconds to end."""
    deadline = time.monotonic() + wait
    while True:
        ps = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
        left = [int(pid) for pid in ps.stdout.split()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_joblib_sweep_killed_leaves_no_worker_and_its_rerun_makes_each_missing_cell_once(tmp_path):
    """A worker whose sweep was SIGKILLed goes at once (loky's would idle 5 minutes, the model loaded, a GPU's memory
    held); the rerun makes the cells that were missing, each once."""
    sweep = tmp_path / "sweep"
    args = ("-m", "seed=range(1,9)", "num_inference_steps=8", "threads=1", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    process = sdlab_process(*args, cwd=tmp_path)
    wait_for(lambda: len(list(sweep.glob("*/job.json"))) >= 2, process)
    process.kill()
    process.wait()
    left = left_in_group(process.pid, wait=10)
    for pid in left:  # not to outlive the test
        os.kill(pid, signal.SIGKILL)
    assert not left
    assert sdlab_process(*args, cwd=tmp_path).wait(timeout=600) == 0
    frame = pd.read_parquet(sweep / "results.parquet")
    assert sorted(frame["seed"]) == list(range(1, 9)) and (frame["status"] == "ok").all()
    assert len(list(sweep.glob("*/images/*.png"))) == 8 and not list(sweep.rglob(".*.sdlab-tmp*"))


def test_ctrl_c_of_a_joblib_sweep_is_one_line_and_exit_130(tmp_path):
    """As with sdlab's own launcher: the workers' semaphores, left to their trackers by the interrupted exit, are no
    warnings of their own."""
    sweep = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "-m", "sdlab.app.cli", "-m", "seed=range(1,9)", "num_inference_steps=8",
                                "threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: len(list(sweep.glob("*/job.json"))) >= 2, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole process group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "denoising" not in line] == [
        f"sdlab: error: interrupted; rerun the same command to resume in {sweep}"], err


@pytest.mark.parametrize("launcher, started_by, ends_with_sweep", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "popen_loky_posix", True),  # a loky worker: the sweep's child
    (["hydra/launcher=submitit_local"], "submitit.core._submit", False),  # a local submitit task: on its own, once up
])
def test_ctrl_c_as_workers_start_is_still_one_line_and_runs_nothing_after(tmp_path, launcher, started_by,
                                                                           ends_with_sweep):
    """A worker that Ctrl-C meets while its interpreter starts (held there 3 s by a sitecustomize) takes no part in it:
    the sweep's one line, no traceback of the worker's, no worker left (a loky worker ends with the sweep, whether or
    not a job has reached it), and no job run once the sweep is gone."""
    site, marks, sweep = tmp_path / "site", tmp_path / "marks", tmp_path / "sweep"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        f"if {started_by!r} in ' '.join(sys.orig_argv):  # a worker, as it starts\n"
        f"    open(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\n"
        "    time.sleep(3)\n")
    alive = lambda: [mark.name for mark in marks.iterdir() if Path(f"/proc/{mark.name}").exists()]  # noqa: E731
    with open(tmp_path / "stderr", "w") as err:  # a file: the sweep's end is seen even while a worker holds it
        process = subprocess.Popen([sys.executable, "-m", "sdlab.app.cli", "-m", "seed=range(1,9)", "model=tiny",
                                    "num_inference_steps=2", "threads=1", *launcher, f"hydra.sweep.dir={sweep}"],
                                   cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                      "PYTHONPATH": os.pathsep.join([str(site), *sys.path])},
                                   stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: any(marks.iterdir()), process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal's whole process group
    assert process.wait(timeout=60) == 130
    if ends_with_sweep:
        deadline = time.monotonic() + 1  # well inside the 3 s the worker is held
        while alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive()
    time.sleep(5)  # the workers' start-up ends, and they find the sweep gone
    assert not alive()
    assert (tmp_path / "stderr").read_text().splitlines() == [
        f"sdlab: error: interrupted; rerun the same command to resume in {sweep}"]
    assert not list(sweep.glob("*/job.json")) and not list(sweep.glob("[0-9]*"))


def test_ctrl_c_while_a_local_task_is_submitted_waits_for_its_folder_and_prints_one_line(tmp_path):
    """Ctrl-C between starting a local submitit task's controller and making its folder (here sent from that very
    moment) is answered once the submission is whole: the controller, deaf to it, would otherwise find no folder
    and print a traceback of its own."""
    site, sweep = tmp_path / "site", tmp_path / "sweep"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if 'sdlab.app.cli' in ' '.join(sys.orig_argv):  # the sweep: Ctrl-C as its second controller starts\n"
        "    from submitit.local import local\n"
        "    start, started = local.start_controller, []\n"
        "    def interrupted(*args, **kwargs):\n"
        "        started.append(start(*args, **kwargs))\n"
        "        if len(started) == 2:\n"
        "            os.killpg(0, signal.SIGINT)  # the terminal's whole process group\n"
        "        return started[-1]\n"
        "    local.start_controller = interrupted\n")
    with open(tmp_path / "stderr", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "sdlab.app.cli", "-m", "seed=1,2,3,4", "model=tiny",
                                    "num_inference_steps=2", "threads=1", "hydra/launcher=submitit_local",
                                    "hydra.sweeper.cells_per_task=2", f"hydra.sweep.dir={sweep}"],
                                   cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                      "PYTHONPATH": os.pathsep.join([str(site), *sys.path])},
                                   stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.wait(timeout=240) == 130
    time.sleep(5)  # the second controller starts its task, which finds the sweep gone
    assert (tmp_path / "stderr").read_text().splitlines() == [
        f"sdlab: error: interrupted; rerun the same command to resume in {sweep}"]


FAIL_GUIDED = """
import sdlab.jobs.generate as job

made = job.generate_batch


def failing(model, params, seeds, **options):
    if params.guidance_scale > 1:
        raise RuntimeError("out of memory (simulated)")
    return made(model, params, seeds, **options)


job.generate_batch = failing
"""


def test_a_failed_job_in_a_launchers_own_process_is_counted_done(run_sdlab, tmp_path, capsys, monkeypatch, request):
    """The progress reaches every cell when some fail in joblib's workers too, and a rerun still makes the failed."""
    from sdlab.bench.plan import finished_hashes

    from joblib.externals.loky import get_reusable_executor

    hooks = tmp_path / "hooks"  # each worker process starts with it: its guided cells fail
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAIL_GUIDED)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]))
    get_reusable_executor().shutdown(wait=True)  # joblib's workers of earlier tests started without the hook
    request.addfinalizer(lambda: get_reusable_executor().shutdown(wait=True))  # nor do later tests get it
    sweep = ("-m", "seed=1", "guidance_scale=1,7.5", "num_inference_steps=2", "threads=1", "hydra/launcher=joblib",
             "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 's'}")
    assert run_sdlab(*sweep) == 1
    out = capsys.readouterr().out
    assert "sdlab: 2 of 2 cells done (" in out and "results.csv: 1 ok, 1 failed" in out, out
    assert "out of memory (simulated)" in pd.read_csv(tmp_path / "s" / "results.csv")["error"].dropna().iloc[0]
    assert len(finished_hashes(tmp_path / "s")) == 1  # the failed cell is made again by a rerun


def test_jobs_seen_ending_together_are_counted_as_and_when_they_ended(tmp_path, capsys):
    """Jobs of a launcher's workers that the watch finds in one look (it looks each second; fast jobs end together)
    are counted in the order they ended, each with the time left as it stood then, not as it stands at the look."""
    from sdlab.app.callbacks import FinishedJobs
    from sdlab.bench.resume import MARKER, write_manifest

    write_manifest(tmp_path, ["seed=1,2,3,4"], [["seed=1"], ["seed=2"], ["seed=3"], ["seed=4"]], finished=0)
    since = time.time() - 100
    for name, ended in (("0", 20), ("1", 10)):  # job 1 ended first
        (tmp_path / name).mkdir()
        (tmp_path / name / MARKER).write_text(json.dumps({"job_hash": name, "rows": 1, "gen_s": 0.5}))
        os.utime(tmp_path / name / MARKER, (since + ended, since + ended))
    watch = FinishedJobs(tmp_path, since=since, every=60)
    watch.start()
    watch.stop()
    lines = [line for line in capsys.readouterr().out.splitlines() if "cells done" in line]
    assert lines == ["sdlab: 1 of 4 cells done (1), 0.10 images/s, about 30 s left",
                     "sdlab: 2 of 4 cells done (0), 0.10 images/s, about 20 s left"], lines


def test_a_resumed_sweep_in_a_launchers_own_processes_counts_its_finished_cells_done(run_sdlab, tmp_path, capsys):
    """joblib runs a finished cell's job too, which finds it so and writes nothing: the progress counts it from the
    start, as with sdlab's own launcher, and reaches the sweep's size."""
    fast = ("num_inference_steps=2", "threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path}")
    assert run_sdlab("-m", "seed=1,2", *fast) == 0
    capsys.readouterr()
    assert run_sdlab("-m", "seed=1,2,3", *fast) == 0
    out = capsys.readouterr().out
    assert "sdlab: 3 of 3 cells done (" in out and "2 of 3 cells done" not in out, out


def _worker_ignores_ctrl_c(answer) -> None:
    from sdlab.app.callbacks import SweepWatch

    SweepWatch.start_once(os.getppid())
    answer.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_launchers_worker_leaves_ctrl_c_to_the_sweep():
    """A loky worker that Ctrl-C reached between two jobs (in its own loop's gc.collect) printed its traceback after
    the sweep's one line: a worker ignores SIGINT once it runs a job, and the sweep, which answers it, ends it."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    answer = context.Queue()
    worker = context.Process(target=_worker_ignores_ctrl_c, args=(answer,))
    worker.start()
    assert answer.get(timeout=60) is True
    worker.join(timeout=60)


def test_a_cell_whose_model_fails_to_load_is_a_failed_row_with_its_own_values(run_sdlab, tmp_path, monkeypatch):
    """A model folder that pre-flight passed but diffusers would not load gave a row with no seed, model, scheduler or
    steps: the sweep's line said `seed=nan`, and a float seed column."""
    from sdlab.errors import UserError
    from sdlab.jobs import generate

    def cannot_load(spec):
        raise UserError(f"model.path={spec.name} cannot be loaded: a pipeline class that does not match its parts")

    monkeypatch.setattr(generate, "load_model", cannot_load)
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("-m", "seed=1,2", "model=tiny", "num_inference_steps=1", "threads=1", "hydra.sweep.dir=s") == 1
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert table["status"].eq("error").all() and table["error"].str.contains("cannot be loaded").all()
    assert table["seed"].tolist() == [1, 2] and table["seed"].dtype == "int64"
    assert table["model"].eq("tiny").all() and table["num_inference_steps"].eq(1).all()
    assert table["scheduler"].notna().all() and table["prompt"].notna().all()


def test_a_cell_that_did_not_run_keeps_its_prompt_as_the_finished_ones_hold_it(tmp_path):
    """Its prompt came from the manifest as Hydra was given it, quotes and all: the report's grid put the missing cell in
    a third column, `prompt='a red circle, small'`, beside the real `prompt=a red circle, small`."""
    import shutil

    from cli_helpers import run_cli

    from sdlab.bench.resume import NOT_RUN, collect

    done = run_cli("-m", "prompt='a red circle, small','it\\'s a ${blue} square'", "model=tiny", "num_inference_steps=1",
                   "threads=1", "hydra.sweep.dir=s", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    made = collect(tmp_path / "s")
    shutil.rmtree(tmp_path / "s" / "1")
    frame = collect(tmp_path / "s")
    assert sorted(made["prompt"]) == ["a red circle, small", "it's a ${blue} square"]
    assert sorted(frame["prompt"]) == sorted(made["prompt"]) and (frame["error"] == NOT_RUN).sum() == 1
