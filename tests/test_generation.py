"""Generation on the tiny model: every scheduler, NFE counting, batch invariance, prompts encoded in each call."""

from __future__ import annotations

import mmap
import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import bare_env, run_cli

from sdlab.models import device, generate, memory
from sdlab.config import GenerationParams
from sdlab.models.schedulers import fitting


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red circle", "width": 64, "height": 64, **kw})


TWO_EVALUATIONS_PER_STEP = {"heun", "dpm2", "dpm2_a", "dpmpp_sde"}  # 2N - 1: the last step is first order


def expected_nfe(name: str, steps: int) -> int:
    """UNet evaluations for `steps` steps with CFG batched into one call per evaluation."""
    if name in TWO_EVALUATIONS_PER_STEP:
        return 2 * steps - 1
    if name == "pndm":
        return steps + 1  # PLMS repeats its first timestep to warm up the multistep history
    return steps


@pytest.mark.parametrize("name", sorted(fitting("epsilon")))  # the tiny UNet predicts epsilon
def test_every_scheduler_runs_two_steps_with_counted_nfe(tiny, name):
    model, _ = tiny
    model.use_scheduler(name)
    result = generate.generate_batch(model, params(num_inference_steps=2), [0])
    assert result.images[0].size == (64, 64)
    assert result.nfe == expected_nfe(name, 2)


@pytest.mark.parametrize("name", ["euler", "heun", "pndm"])
def test_nfe_at_ten_steps(tiny, name):
    model, _ = tiny
    model.use_scheduler(name)
    result = generate.generate_batch(model, params(num_inference_steps=10, guidance_scale=7.5), [0])
    assert result.nfe == expected_nfe(name, 10)


def test_seed_gives_same_image_alone_or_in_a_batch(tiny):
    model, _ = tiny
    model.use_scheduler("euler_a")
    p = params(num_inference_steps=3)
    batched = generate.generate_batch(model, p, [5, 6, 7]).images
    for seed, image in zip([5, 6, 7], batched):
        alone = generate.generate_batch(model, p, [seed]).images[0]
        assert np.abs(np.asarray(alone, float) - np.asarray(image, float)).max() <= 1
    assert np.abs(np.asarray(batched[0], float) - np.asarray(batched[1], float)).max() > 10


def test_mini_gives_a_seed_the_same_image_alone_or_in_a_batch_of_16():
    """Each seed's image in a batch of 16 is its lone image within one level (oneDNN in the UNet made seed 2 differ by 3)."""
    from sdlab.models.loading import configured_spec, load_model

    model = load_model(configured_spec("mini"))
    model.quiet()
    model.use_scheduler("dpmpp_2m")
    p = GenerationParams(prompt="a small red circle in the centre on a blue background", width=64, height=64,
                         num_inference_steps=25, guidance_scale=1.0)
    seeds = list(range(1, 17))
    batched = generate.generate_batch(model, p, seeds).images
    for seed, image in zip(seeds, batched):
        alone = generate.generate_batch(model, p, [seed]).images[0]
        assert (seed, np.abs(np.asarray(alone, int) - np.asarray(image, int)).max()) <= (seed, 1)


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "heun", "dpmpp_sde", "euler_a"])  # solvers that keep state
def test_a_scheduler_asked_for_again_is_kept_and_makes_the_same_image_as_a_new_one(tiny, name):
    model, _ = tiny
    p = params(num_inference_steps=4, guidance_scale=3.0)
    kept = model.use_scheduler(name)
    first = generate.generate_batch(model, p, [11]).images[0]
    assert model.use_scheduler(name) is kept
    again = generate.generate_batch(model, p, [11]).images[0]
    assert model.use_scheduler(name, {"timestep_spacing": "trailing"}) is not kept
    model.scheduler = foreign = type(kept).from_config(kept.config)  # set in between: replaced, never taken as asked
    fresh = model.use_scheduler(name)
    assert fresh is not kept and fresh is not foreign
    assert np.array_equal(np.asarray(generate.generate_batch(model, p, [11]).images[0]), np.asarray(first))
    assert np.array_equal(np.asarray(again), np.asarray(first))


def test_dpmpp_sde_gives_a_seed_the_same_image_again_and_inside_a_batch(tiny):
    """Its Brownian-tree noise comes from each image's seed, not from torch's global generator."""
    import torch

    model, _ = tiny
    model.use_scheduler("dpmpp_sde")
    p = params(num_inference_steps=4, guidance_scale=3.0)
    alone = np.asarray(generate.generate_batch(model, p, [11]).images[0], dtype=int)
    torch.manual_seed(12345)  # whatever the global generator holds
    again = np.asarray(generate.generate_batch(model, p, [11]).images[0], dtype=int)
    batched = [np.asarray(image, dtype=int) for image in generate.generate_batch(model, p, [3, 11]).images]
    assert np.abs(again - alone).max() == 0
    assert np.abs(batched[1] - alone).max() <= 1
    assert np.abs(batched[0] - alone).max() > 10


def test_each_call_encodes_its_own_prompts_once_so_no_cell_rides_on_an_earlier_calls_encoding(tiny):
    model, _ = tiny
    calls, original = [], model.pipe.encode_prompt

    def encode_prompt(prompt, *args, **kwargs):
        if prompt is not None:  # the pipeline's own call passes the embeddings it was given through
            calls.append(prompt)
        return original(prompt, *args, **kwargs)

    model.pipe.encode_prompt = encode_prompt
    try:
        base = params(num_inference_steps=1, guidance_scale=1.0, prompt="an encoded blue square")
        first = generate.generate_batch(model, base, [1])
        second = generate.generate_batch(model, base, [1])
        assert calls == [base.prompt, base.prompt]  # the second call pays for its prompt as the first did
        assert second.time_text_s > 0 and first.time_text_s > 0
        calls.clear()
        other = replace(base, prompt="an encoded red circle")
        generate.generate_batch(model, base, [1, 2, 3, 4], requests=[base, other, base, other])
        assert sorted(calls) == sorted([base.prompt, other.prompt])  # each distinct prompt once in a call
    finally:
        del model.pipe.encode_prompt


def test_nan_output_is_reported_not_saved():
    import torch

    latents = torch.full((1, 4, 8, 8), float("nan"))
    assert generate.check_output(latents, torch.zeros(1, 3, 64, 64), [3]) == {0: "NaN/inf in the latents of seed 3"}
    assert generate.check_output(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 64, 64), [3]) == {
        0: "all-black image for seed 3"}


def test_base_scheduler_config_survives_a_cleared_cache(tiny):
    from sdlab.models import loading as models

    _, spec = tiny
    models.clear_cache()
    assert models.load_model(spec).base_scheduler_config["beta_schedule"] == "scaled_linear"


def test_a_calls_peak_memory_is_its_own_not_the_largest_call_made_before_it(tiny):
    """A sweep runs its cells in one process: a small image made after a large one must not report the large one's
    peak, or every later cell of a sweep over sizes carries the same number and the summary ranks them by order."""
    model, _ = tiny
    large = generate.generate_batch(model, GenerationParams(num_inference_steps=1, width=512, height=512),
                                    [1, 2, 3, 4])
    small = generate.generate_batch(model, GenerationParams(num_inference_steps=1, width=64, height=64), [1])
    assert large.peak_mem_bytes is not None and small.peak_mem_bytes is not None
    assert small.peak_mem_bytes < large.peak_mem_bytes - 50 * 2**20, (small.peak_mem_bytes, large.peak_mem_bytes)


def new_pages(size: int) -> None:
    """Map `size` bytes from the kernel, touch every page and unmap them: an allocator's array may reuse pages the
    process already holds, which raise no resident count."""
    with mmap.mmap(-1, size) as pages:
        for offset in range(0, size, mmap.PAGESIZE):
            pages[offset] = 1


def test_a_peak_shorter_than_any_sampling_interval_is_caught_and_no_thread_competes_with_the_call():
    """A call's brief spike below the process's earlier peak was missed between samples, and the sampling thread
    woke every 5 ms to take the interpreter from the denoiser: the kernel's own high-water mark, lowered at the call's
    start, gives the exact peak with nothing running beside the call."""
    earlier = np.ones(200 * 2**20, dtype=np.uint8)  # the process's peak so far, far above the spike below
    del earlier
    threads = []
    with memory.call_peak(torch.device("cpu")) as peak:
        threads.append(threading.active_count())
        base = memory.resident_bytes()
        new_pages(40 * 2**20)  # made and freed within a few milliseconds
    assert threads[0] == threading.active_count()
    assert peak[0] is not None and peak[0] >= base + 39 * 2**20, (peak[0], base)


def test_where_the_mark_cannot_be_lowered_a_peak_is_given_only_when_the_call_raised_it(tmp_path, monkeypatch):
    """Without clear_refs (an older kernel, a locked-down /proc) the mark may be an earlier call's: a call that stays
    under it reports no peak, one that raises it reports the new mark."""
    monkeypatch.setattr(memory, "CLEAR_REFS", str(tmp_path / "no-such-dir" / "clear_refs"))
    with memory.call_peak(torch.device("cpu")) as under:
        pass
    with memory.call_peak(torch.device("cpu")) as over:
        new_pages(memory.high_water_bytes() - memory.resident_bytes() + 64 * 2**20)
    assert under[0] is None and over[0] == memory.high_water_bytes()


def test_where_a_peak_cannot_be_read_rows_carry_none_and_the_sweep_ends_well(run_sdlab, tmp_path, monkeypatch,
                                                                               capsys):
    """No number is better than a number that belongs to an earlier call: where the peak cannot be read (no /proc,
    as on macOS) the column stays empty, and the table, summary and the next plan still come out."""
    monkeypatch.setattr(memory, "STATUS", str(tmp_path / "no-such-file"))
    sweep = ("-m", "seed=1,2,3", "model=tiny", "num_inference_steps=1", "threads=1")
    assert run_sdlab(*sweep, f"hydra.sweep.dir={tmp_path / 'first'}") == 0
    frame = pd.read_parquet(tmp_path / "first" / "results.parquet")
    assert (frame["status"] == "ok").all() and frame["peak_mem_bytes"].isna().all()
    capsys.readouterr()
    assert run_sdlab(*sweep, f"hydra.sweep.dir={tmp_path / 'next'}", "plan=true") == 0  # priced by the first
    plan = capsys.readouterr().out
    assert "peak memory unknown" in plan and "estimate: unknown" not in plan, plan  # the wall is still priced


def test_the_first_call_of_a_shape_is_warmed_up_untimed_and_makes_the_same_image(tiny, monkeypatch):
    """A compiled model's first call at a batch, size and solver pays for its graph (an accelerator's for its lazy
    kernels), so the first cell of a sweep looked slower for its place, not its scheduler: one untimed denoising step
    and decode at that shape come first, once, and change no pixel and no NFE."""
    model, spec = tiny
    monkeypatch.setattr(model, "spec", replace(spec, compile=True))  # as a compiled model is warmed
    model.use_scheduler("euler")  # one denoiser call a step
    params = GenerationParams(num_inference_steps=3, width=72, height=72, guidance_scale=7.5)  # a shape of its own
    forwards = []
    hook = model.denoiser.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        first = generate.generate_batch(model, params, [11, 12, 13])
        calls_first, forwards[:] = len(forwards), []
        second = generate.generate_batch(model, params, [11, 12, 13])
        calls_second = len(forwards)
    finally:
        hook.remove()
    assert (calls_first, calls_second) == (4, 3) and first.nfe == second.nfe == 3
    for a, b in zip(first.images, second.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert first.time_total_s == pytest.approx(first.time_text_s + first.time_unet_s + first.time_vae_s)


def test_a_compiled_models_graph_is_built_in_no_cells_time(tmp_path):
    """`model.compile=true` builds its graph at the first call and again for a new solver: those cells took 11.8 and
    4.8 s an image on tiny against 0.02 s after, so a sweep ranked solvers by their place. The warm-up builds it."""
    started = time.perf_counter()
    done = run_cli("-m", "scheduler=euler,ddim", "seed=1,2", "model=tiny", "model.compile=true", "num_inference_steps=3",
                   "threads=1", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path, env=bare_env(), timeout=600)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert len(frame) == 4 and (frame["status"] == "ok").all()
    assert frame["time_total_s"].sum() < 0.25 * wall, (frame[["scheduler", "time_total_s"]], wall)


def test_each_phase_is_timed_after_the_devices_queued_work_is_done(tiny, monkeypatch):
    """CUDA runs a call's kernels after Python has moved on: a clock read without waiting gave the denoiser's last
    steps to the VAE's time (and the text encoder's to the denoiser's). Every phase boundary waits for the device."""
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: waited.append(("cuda", d)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(("mps", None)))
    before = time.perf_counter()
    assert before <= device.clock(torch.device("cuda", 1)) and waited == [("cuda", torch.device("cuda", 1))]
    device.clock(torch.device("mps"))
    device.clock(torch.device("cpu"))  # nothing queued on a CPU
    assert waited[1:] == [("mps", None)]
    clocks = []
    monkeypatch.setattr(generate, "clock", lambda d: clocks.append(d) or time.perf_counter())
    model, _ = tiny
    generate.generate_batch(model, GenerationParams(num_inference_steps=1, width=64, height=64), [1])
    assert clocks == [model.device] * 5  # start, text, warm-up, denoiser, decode


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "unipc", "lms_karras", "ddim", "heun"])
def test_a_scheduler_on_sd1x_takes_the_timesteps_diffusers_gives_it_from_the_pipelines_config(tiny, name):
    """`X.from_config(pipe.scheduler.config)` leaves out the values PNDM's config only has as its class's defaults
    (timestep_spacing=leading): Euler and DPM++ start at t=999, not 961 and 951; loaded or not, sdlab does the same."""
    import diffusers

    from sdlab.models import loading
    from sdlab.models.schedulers import SCHEDULERS, make_scheduler

    model, spec = tiny
    spec_of = SCHEDULERS[name]
    shipped = getattr(diffusers, model.base_scheduler_class).from_config(loading.published_scheduler_config(spec)[0])
    idiom = getattr(diffusers, spec_of.cls).from_config(shipped.config, **spec_of.options)
    idiom.set_timesteps(25)
    model.use_scheduler(name)
    model.scheduler.set_timesteps(25)
    loading.clear_cache()
    unloaded = make_scheduler(name, loading.shipped_scheduler_config(spec)[0])
    unloaded.set_timesteps(25)
    from_pipeline = make_scheduler(name, dict(shipped.config))  # a loaded pipeline's config, as a hand loop passes it
    from_pipeline.set_timesteps(25)
    assert model.scheduler.timesteps.tolist() == idiom.timesteps.tolist() == unloaded.timesteps.tolist()
    assert from_pipeline.timesteps.tolist() == idiom.timesteps.tolist()
    assert model.scheduler.config.timestep_spacing == idiom.config.timestep_spacing
