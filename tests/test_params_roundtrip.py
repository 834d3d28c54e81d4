"""Parameters round-trip: a PNG regenerates itself, A1111's infotext and JSON names are read and written."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sdlab.errors import UserError
from sdlab.bench.run import format_infotext, from_a1111, parse_infotext, sampler_to_scheduler
from sdlab.bench.run import load_params

A1111_PNG_TEXT = """a lighthouse, oil painting, dramatic
Negative prompt: blurry, lowres
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.9.4"""


def test_a1111_infotext_is_read():
    params = parse_infotext(A1111_PNG_TEXT)
    assert params == {"prompt": "a lighthouse, oil painting, dramatic", "negative_prompt": "blurry, lowres",
                      "num_inference_steps": 20, "scheduler": "dpmpp_2m_karras", "guidance_scale": 7, "seed": 1234,
                      "width": 512, "height": 768}


def test_a1111_quotes_a_value_holding_a_comma_and_it_is_read_unquoted():
    """A1111 writes a value holding a comma, colon or quote as a JSON string, and reads it back unquoted; sdlab kept
    the quotes of a quoted sampler and refused it."""
    text = 'a red circle\nSteps: 20, Sampler: "DPM++ 2M Karras", CFG scale: 7, Seed: 1, Size: 64x64'
    assert parse_infotext(text)["scheduler"] == "dpmpp_2m_karras"
    escaped = 'a red circle\nSteps: 20, Sampler: "Euler a", Lora hashes: "x: \\"1\\", y: 2", CFG scale: 7, Seed: 1'
    assert parse_infotext(escaped)["scheduler"] == "euler_a"


def test_infotext_written_by_sdlab_reads_back():
    meta = {"prompt": "a red circle, big", "negative_prompt": "", "seed": 3, "num_inference_steps": 25,
            "guidance_scale": 7.5, "width": 64, "height": 64, "eta": 0.0, "scheduler": "euler_a", "model": "mini"}
    text = format_infotext(meta)
    assert text.splitlines()[0] == "a red circle, big"
    assert text.splitlines()[1].startswith("Steps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 3, Size: 64x64")
    back = parse_infotext(text)
    assert {k: back[k] for k in ("prompt", "seed", "num_inference_steps", "guidance_scale", "scheduler")} == {
        "prompt": "a red circle, big", "seed": 3, "num_inference_steps": 25, "guidance_scale": 7.5,
        "scheduler": "euler_a"}


@pytest.mark.parametrize("sampler,schedule,expected", [
    ("DPM++ 2M Karras", None, "dpmpp_2m_karras"), ("DPM++ 2M", "Karras", "dpmpp_2m_karras"), ("Euler a", None, "euler_a"),
    ("euler", "Automatic", "euler"), ("dpmpp_2m", None, "dpmpp_2m"), ("DDIM", None, "ddim"), ("LMS Karras", None, "lms_karras"),
    # sdlab's own names with a Karras schedule type, spelled as A1111 spells them or as sdlab does
    ("dpmpp 2m", "Karras", "dpmpp_2m_karras"), ("dpmpp_2m", "Karras", "dpmpp_2m_karras"), ("lms", "Karras", "lms_karras"),
])
def test_sampler_names(sampler, schedule, expected):
    assert sampler_to_scheduler(sampler, schedule) == expected


@pytest.mark.parametrize("sampler,schedule,fragment", [
    ("Restart", None, "sampler 'Restart' has no sdlab scheduler"),
    ("DPM++ 2M", "Exponential", "schedule type 'Exponential' is not supported"),
    # Euler a is an sdlab scheduler: the Karras schedule is what it has not, and the message said the sampler
    ("Euler a", "Karras", r"^sampler 'Euler a' with schedule type 'Karras' has no sdlab scheduler; the Karras schedule "
                          r"goes with: LMS, DPM\+\+ 2M, DPM\+\+ 2M SDE \(or give schedule type Automatic\)$"),
    ("euler_a", "Karras", "^sampler 'euler_a' with schedule type 'Karras' has no sdlab scheduler"),
])
def test_unknown_samplers_are_one_clear_error(sampler, schedule, fragment):
    with pytest.raises(UserError, match=fragment):
        sampler_to_scheduler(sampler, schedule)


def test_a1111_json_names_load(tmp_path):
    path = tmp_path / "a1111.json"
    path.write_text(json.dumps({"prompt": "a red circle", "steps": 12, "cfg_scale": 5, "sampler_name": "DPM++ 2M",
                                "scheduler": "Karras", "seed": 7, "width": 64, "height": 64, "negative_prompt": "x"}))
    assert load_params(path) == {"prompt": "a red circle", "num_inference_steps": 12, "guidance_scale": 5,
                                 "scheduler": "dpmpp_2m_karras", "seed": 7, "width": 64, "height": 64,
                                 "negative_prompt": "x"}
    with pytest.raises(UserError, match="both 'steps' and 'num_inference_steps'"):
        from_a1111({"steps": 2, "num_inference_steps": 3})


def test_png_without_parameters_is_one_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(UserError, match="carries no generation parameters"):
        load_params(tmp_path / "plain.png")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(UserError, match="is not a readable PNG"):
        load_params(tmp_path / "fake.png")


def test_an_sdlab_png_regenerates_itself_exactly(run_sdlab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_sdlab("model=tiny", "seed=3", "num_inference_steps=3", "scheduler=euler",
                     "scheduler.timestep_spacing=trailing", "prompt=a, b", "negative_prompt=blurry", "threads=1",
                     "hydra.run.dir=first") == 0
    image = pd.read_parquet(tmp_path / "first" / "results.parquet")["image_path"][0]
    assert run_sdlab(f"params=first/{image}", "threads=1", "hydra.run.dir=again") == 0
    first, again = (pd.read_parquet(tmp_path / d / "results.parquet").iloc[0] for d in ("first", "again"))
    for column in ("model", "scheduler", "scheduler_config", "prompt", "negative_prompt", "seed",
                   "num_inference_steps", "guidance_scale", "config_hash"):
        assert first[column] == again[column], column
    pixels = [np.asarray(Image.open(tmp_path / d / image)) for d in ("first", "again")]
    assert np.array_equal(*pixels)
    assert Image.open(tmp_path / "first" / image).text["parameters"].startswith("a, b\nNegative prompt: blurry\nSteps: 3, Sampler: Euler,")


def test_the_run_dir_records_the_config_that_ran(run_sdlab, tmp_path, monkeypatch):
    """run_config.json holds what the job ran with (params=FILE merged in), not Hydra's composition before it."""
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps({"guidance_scale": 3.5, "prompt": "a blue square"}))
    assert run_sdlab("params=p.json", "num_inference_steps=1", "threads=1", "hydra.run.dir=r") == 0
    ran = json.loads((tmp_path / "r" / "run_config.json").read_text())
    composed = yaml.safe_load((tmp_path / "r" / ".hydra" / "config.yaml").read_text())
    assert (ran["guidance_scale"], ran["prompt"], ran["num_inference_steps"]) == (3.5, "a blue square", 1)
    assert composed["guidance_scale"] == 7.5
    assert pd.read_csv(tmp_path / "r" / "results.csv")["guidance_scale"].tolist() == [3.5]


def test_each_generation_parameter_is_named_by_its_dataclass_field():
    """Row columns, the cell hash, the PNG record, a params file's keys and the report's constants all follow
    GenerationParams: a field added there reaches every one of them."""
    from dataclasses import fields

    from sdlab.bench.run import PARAM_TYPES
    from sdlab.bench.records import PARAM_COLUMNS, ROW_COLUMNS
    from sdlab.config import IMAGE_PARAMS, GenerationParams, image_params
    from sdlab.jobs.generate import PNG_KEYS, hash_fields

    names = {f.name for f in fields(GenerationParams)}
    assert set(IMAGE_PARAMS) == names - {"seeds", "batch_size"}
    assert set(IMAGE_PARAMS) <= set(PARAM_COLUMNS) & set(ROW_COLUMNS) & set(PNG_KEYS)
    assert names <= set(PARAM_TYPES)
    common = {"model": "tiny", "scheduler": "euler", "scheduler_config": "{}", **image_params(GenerationParams())}
    assert set(hash_fields(common, [])) == {"model", "scheduler", "scheduler_config", "scorers", *IMAGE_PARAMS}


def test_a_file_takes_batch_size_auto_as_the_command_line_does(tmp_path):
    """It said batch_size='auto' should be int, though batch_size=auto on the command line runs."""
    path = tmp_path / "auto.json"
    path.write_text(json.dumps({"prompt": "a red circle", "batch_size": "auto"}))
    assert load_params(path)["batch_size"] == "auto"
    path.write_text(json.dumps({"batch_size": 1.5}))
    with pytest.raises(UserError, match=r"batch_size=1\.5 should be int or str$"):
        load_params(path)


def test_a_file_giving_seed_and_seeds_is_refused_as_the_command_line_is(tmp_path):
    """Only one of them would take effect: `seeds` replaced `seed` without a word."""
    path = tmp_path / "both.json"
    path.write_text(json.dumps({"prompt": "a red circle", "seed": 5, "seeds": [1, 2]}))
    with pytest.raises(UserError, match=r"^params=.*both\.json gives both 'seed' and 'seeds' \(seeds, when set, "
                                        r"replaces seed\); keep one$"):
        load_params(path)


@pytest.mark.parametrize("given,typed,seeds", [
    ({"seeds": [1, 2]}, {"seed": 9}, None),  # the file's seeds replaced the typed seed=9: images of seeds 1 and 2
    ({"seed": 3}, {"seeds": [4, 5]}, [4, 5]),
    ({"seed": 3, "scheduler": "euler"}, {"seed": 4, "scheduler": "ddim"}, None),
])
def test_the_command_line_wins_over_the_file_and_says_what_gave_way(tmp_path, given, typed, seeds):
    from sdlab.bench.run import with_params_file

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "a red circle", **given}))
    config = {"params": str(path), "scheduler": {"name": typed.get("scheduler", "dpmpp_2m")}, "model": {"name": "mini"},
              "seed": typed.get("seed", 0), "seeds": typed.get("seeds")}
    notes = []
    merged = with_params_file(config, set(typed), notes)
    assert (merged["seed"], merged["seeds"], merged["scheduler"]["name"]) == (config["seed"], seeds,
                                                                               config["scheduler"]["name"])
    assert merged["prompt"] == "a red circle"
    shown = ", ".join(f"{key}={value!r}" for key, value in given.items())
    verb = "gives" if len(given) == 1 else "give"
    assert f"params={path}: {shown} from the file {verb} way to the command line" in notes


def test_an_image_tools_settings_sdlab_does_not_read_are_named(tmp_path):
    """Denoising strength, Clip skip and hires settings change the image; they were dropped without a word."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_PNG_TEXT + ', Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, '
                                                'Lora hashes: "a: 1f, b: 2e"')
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    notes = []
    assert load_params(tmp_path / "a1111.png", notes=notes)["num_inference_steps"] == 20
    assert notes == [f"params={tmp_path / 'a1111.png'}: sdlab does not read the image tool's Model hash: 6ce0161689, "
                     "Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, "
                     'Lora hashes: "a: 1f, b: 2e"; its image may differ']


@pytest.mark.parametrize("name,expected", [("dpmpp_2m_karras", "dpmpp_2m_karras"), ("DPM++ 2M Karras", "dpmpp_2m_karras"),
                                           ("Euler a", "euler_a")])
def test_a_params_files_scheduler_may_be_sdlabs_name_or_the_sampler_an_image_tool_shows(tmp_path, name, expected):
    (tmp_path / "p.json").write_text(json.dumps({"scheduler": name}))
    assert load_params(tmp_path / "p.json")["scheduler"] == expected


def test_an_unknown_scheduler_in_a_params_file_is_named_with_its_file_before_anything_loads(tmp_path):
    """It was refused only by the pre-flight, after importing diffusers (3 s), in a line that did not name the file."""
    (tmp_path / "p.json").write_text(json.dumps({"scheduler": "dpmpp_2m_karas"}))
    with pytest.raises(UserError, match=r"^params=\S+p.json: unknown scheduler 'dpmpp_2m_karas' \(did you mean "
                                        r"dpmpp_2m_karras\?\); choose one of: ddim, .*'DPM\+\+ 2M Karras'\)$"):
        load_params(tmp_path / "p.json")


@pytest.mark.parametrize("settings, said", [
    ("Steps: 1, Sampler: Euler, CFG scale: 3, Seed: 5, Size: 64x64, Steps: 2", "gives 'Steps' twice; keep one"),
    ("Steps: 1, Seed: 5, Size: 32 x 48", "Size: 32 x 48 must be WIDTHxHEIGHT, such as 512x768"),
    ("Steps: 1, Seed: 5, Size: 64x", "Size: 64x must be WIDTHxHEIGHT"),
])
def test_an_infotext_that_says_a_setting_twice_or_a_size_sdlab_cannot_read_is_refused(settings, said):
    """`Steps` twice ran the last one; `Size: 32 x 48` was skipped with a warning that sdlab does not read Size (it
    does) and the image came out at the model's own size."""
    with pytest.raises(UserError, match=re.escape(said)):
        parse_infotext(f"a red circle\n{settings}")


@pytest.mark.parametrize("settings,error", [
    ("Steps: 2, Sampler: Euler, Hires upscale: 2, Seed: -5", "seed=-5 must be in [0, 2**63-1]"),
    ("Steps: 2, Sampler: Nope, Hires upscale: 2, Seed: 5", "sampler 'Nope' has no sdlab scheduler"),
])
def test_a_refused_png_is_one_line_that_names_it_with_no_warning_before_it(run_sdlab, tmp_path, capsys, settings,
                                                                            error):
    """What sdlab skips of a PNG's parameters is said once the run passed its checks: a file refused for a bad value
    was a warning line, then an error line that did not name the file (`seed=-5 ...`, which no one typed)."""
    from PIL import PngImagePlugin
    from test_cli import one_error_line

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a red circle\n{settings}")
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png", pnginfo=info)
    assert run_sdlab(f"params={tmp_path / 'p.png'}", f"hydra.run.dir={tmp_path / 'run'}") == 2
    line = one_error_line(capsys)
    assert line.startswith(f"sdlab: error: params={tmp_path / 'p.png'}: ") and error in line, line
    assert "Hires" not in capsys.readouterr().out


def test_what_a_png_leaves_unread_is_said_once_when_it_runs(run_sdlab, tmp_path, capsys):
    """A run from a PNG with settings sdlab does not read says so in one warning, once, and runs."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 2, Sampler: Euler, Hires upscale: 2, Seed: 5, Size: 64x64")
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png", pnginfo=info)
    assert run_sdlab(f"params={tmp_path / 'p.png'}", "model=tiny", "threads=1", f"hydra.run.dir={tmp_path / 'run'}") == 0
    captured = capsys.readouterr()
    said = (captured.out + captured.err).count("sdlab does not read the image tool's Hires upscale: 2")
    assert said == 1, captured.out + captured.err
    assert pd.read_parquet(tmp_path / "run" / "results.parquet")["seed"].tolist() == [5]
