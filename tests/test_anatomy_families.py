"""`sdlab experiment=anatomy model=<family>_arch`: the published parameter counts of every family, per component."""

import pandas as pd
import pytest

from sdlab.models.architectures import ARCHITECTURES

ARCH_MODELS = [name for name in ARCHITECTURES if name.endswith("_arch")]


@pytest.mark.parametrize("name", ARCH_MODELS)
def test_anatomy_counts_every_component_of_every_family(name):
    from sdlab.config import model_spec
    from sdlab.jobs.anatomy import denoiser_name, meta_components
    from sdlab.metrics.anatomy import component_table, denoiser_block_table

    components = meta_components(model_spec({"name": name}))
    counts = component_table(components).set_index("component")["params"]
    assert {k: counts[k] for k in ARCHITECTURES[name].param_counts} == ARCHITECTURES[name].param_counts
    denoiser = components[denoiser_name(components)]
    assert denoiser_block_table(denoiser)["params"].sum() == counts[denoiser_name(components)]


def test_anatomy_of_a_transformer_family_from_the_command_line(run_sdlab, tmp_path):
    assert run_sdlab("experiment=anatomy", "model=flux_dev_arch", f"hydra.run.dir={tmp_path}") == 0
    frame = pd.read_parquet(tmp_path / "results.parquet").set_index("component")
    assert frame.loc["transformer", "params"] == 11_901_408_320
    assert frame.loc["text_encoder_2", "params"] == 4_762_310_656
    assert frame.loc["transformer", "latent_shape"] == "16x128x128"  # 16-channel VAE at 1024 px
    blocks = pd.read_parquet(tmp_path / "transformer_blocks.parquet")
    assert "transformer_blocks (19x FluxTransformerBlock)" in blocks["block"].tolist()
    assert "single_transformer_blocks (38x FluxSingleTransformerBlock)" in blocks["block"].tolist()
    assert frame.loc["total", "params"] == frame.drop(index="total")["params"].sum()


def test_anatomy_figure_labels_each_block_whole_and_no_share_as_zero(run_sdlab, tmp_path, monkeypatch):
    from sdlab.bench import figures

    drawn, save = [], figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k))
    assert run_sdlab("experiment=anatomy", "model=flux_dev_arch", f"hydra.run.dir={tmp_path}") == 0
    blocks = pd.read_parquet(tmp_path / "transformer_blocks.parquet")
    [fig] = drawn
    parts, stack = fig.axes
    assert [" ".join(t.get_text().split("\n")) for t in stack.get_yticklabels()] == blocks["block"].tolist()
    notes = [t.get_text() for ax in (parts, stack) for t in ax.texts]
    assert " 83.8 M (<1% of the model), 160 MiB fp16" in notes and " <0.1%" in notes and " 54.3%" in notes
    assert not any(zero in note for note in notes for zero in ("(0%)", "0.0%"))


def test_anatomy_reads_every_component_a_folder_lists(tmp_path):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from sdlab.models.architectures import build_components
    from sdlab.config import model_spec
    from sdlab.jobs.anatomy import meta_components
    from sdlab.metrics.anatomy import component_table
    from sdlab.models.tokenizer import load_tokenizer

    parts = build_components(ARCHITECTURES["tiny"])
    pipe = StableDiffusionPipeline(**parts, tokenizer=load_tokenizer(), scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
                                   safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    components = meta_components(model_spec({"name": "sd15", "path": str(tmp_path)}))
    assert set(components) == {"unet", "vae", "text_encoder"}
    assert all(p.device == torch.device("meta") for m in components.values() for p in m.parameters())
    counts = component_table(components).set_index("component")["params"]
    assert counts["unet"] == sum(p.numel() for p in parts["unet"].parameters())
