"""What every model family shares: one adapter per loaded model, which jobs ask instead of the pipeline. A family
subclass names its diffusers pipeline class, how it encodes prompts (`_encode`) and what its pipeline call takes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from sdlab.config import ModelSpec
from sdlab.errors import UserError
from sdlab.lazy import torch
from sdlab.metrics.schedule import guided, model_kind
from sdlab.models.architectures import ARCHITECTURES, build_components, build_scheduler
from sdlab.models.device import switch_per_network
from sdlab.models.model_files import SAFE_LOCAL
from sdlab.models.noise import PROCESSES, NoiseProcess
from sdlab.models.schedulers import as_published, make_scheduler, seed_noise
from sdlab.models.tokenizer import BUILT_IN_TOKENIZERS


class PerImageScale(float):
    """One guidance scale per image for the CFG step eps_u + w (eps_c - eps_u) (Ho & Salimans 2022): multiplies rows."""

    def __new__(cls, scales: list[float]):
        scale = super().__new__(cls, scales[0])
        scale.scales = tuple(float(s) for s in scales)
        return scale

    def __mul__(self, other):
        if isinstance(other, torch.Tensor) and other.dim() and len(other) == len(self.scales):
            column = torch.tensor(self.scales, dtype=other.dtype, device=other.device)
            return column.view(-1, *[1] * (other.dim() - 1)) * other
        return float(self) * other

    __rmul__ = __mul__


class ModelAdapter:
    """One loaded model: its pipeline, denoiser, prompt encoding, decoding, scheduler kind, sizes and speed options."""

    family: ClassVar[str]
    pipeline_class: ClassVar[str]                      # the diffusers pipeline that loads and runs it
    denoiser_name: ClassVar[str] = "unet"
    guidance: ClassVar[str] = "cfg"                    # "cfg": cond + uncond in one batched call; "distilled": one call
    call_options: ClassVar[tuple[str, ...]] = ()       # GenerationParams fields the pipeline also takes
    tokenizers: ClassVar[dict[str, str]] = {"tokenizer": "clip"}  # pipeline attribute -> clip | t5 (built-in models)
    default_sequence_length: ClassVar[int | None] = None  # T5 tokens the pipeline pads to by default
    upcasts_vae: ClassVar[bool] = False                # decode a float16 VAE marked `force_upcast` in float32
    linear_sigmas: ClassVar[bool] = False              # the pipeline passes sigmas linspace(1, 1/N, N) to the scheduler
    plain_unet_call: ClassVar[bool] = False            # the denoiser is SD 1.x's: unet(x, t, encoder_hidden_states=text)
    loaded_with: ClassVar[dict[str, Any]] = {}         # the family's own `from_pretrained` arguments
    latent_packing: ClassVar[int] = 1                  # VAE latent channels per denoiser input channel (Flux: 2x2, 4)
    # each width the denoiser takes from text, and the text encoders' config key summed to it, over those that have it
    text_widths: ClassVar[tuple[tuple[str, str], ...]] = (("cross_attention_dim", "hidden_size"),)  # each CLIP's

    def __init__(self, pipe, spec: ModelSpec):
        self.pipe = pipe
        self.spec = spec
        self.base_scheduler_config = as_published(dict(pipe.scheduler.config))  # before any swap
        self.base_scheduler_class = type(pipe.scheduler).__name__
        self.embeddings: dict[str, dict[str, torch.Tensor]] = {}  # prompt -> pipeline keyword arguments, this call's
        self.made: dict[str, Any] = {}  # cell hash -> its image made ahead in a sweep's shared call, until its job takes it
        self.scheduler_made: tuple = ()  # (name and options asked for, the scheduler made for them)
        self.warm: set[tuple] = set()  # the calls (images, width, height, guided, solver) this process has run once

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name}, {self.pipeline_class})"

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype, spec: ModelSpec):
        """The pipeline from a diffusers folder: safetensors only, local files only, never remote code."""
        import diffusers

        variant = {"variant": spec.variant} if spec.variant else {}
        return getattr(diffusers, cls.pipeline_class).from_pretrained(
            str(folder), dtype=dtype, **SAFE_LOCAL, **variant, **cls.load_options(spec))

    @classmethod
    def components(cls) -> tuple[str, ...]:
        """The folders its pipeline runs with: VAE, denoiser, and each text encoder with its tokenizer."""
        return ("vae", cls.denoiser_name,
                *(part for name in cls.tokenizers for part in (name.replace("tokenizer", "text_encoder"), name)))

    @classmethod
    def check_fit(cls, folder: Path, configs: dict[str, dict[str, Any]]) -> None:
        """Refuse components of different models: the denoiser takes the VAE's channels and text encoders' widths."""
        denoiser, where = configs.get(cls.denoiser_name, {}), folder / cls.denoiser_name / "config.json"
        mixed = "the folder mixes components of different models"
        latent, taken = configs.get("vae", {}).get("latent_channels"), denoiser.get("in_channels")
        if isinstance(latent, int) and isinstance(taken, int) and taken != latent * cls.latent_packing:
            packed = f" ({cls.latent_packing} to an input channel)" if cls.latent_packing > 1 else ""
            raise UserError(f"{where}: in_channels={taken} does not take the {latent} latent channels of its "
                            f"vae{packed} ({folder / 'vae' / 'config.json'}); {mixed}")
        for key, size in cls.text_widths:
            widths = {name: configs[name][size] for name in cls.components()
                      if name.startswith("text_encoder") and size in configs.get(name, {})}
            width = denoiser.get(key)
            if (widths and isinstance(width, int) and all(isinstance(w, int) for w in widths.values())
                    and width != sum(widths.values())):
                given = ", ".join(f"{name}: {w}" for name, w in widths.items())
                raise UserError(f"{where}: {key}={width}, but its text encoders give {sum(widths.values())} ({given}); "
                                f"{mixed}")

    @classmethod
    def load_options(cls, spec: ModelSpec) -> dict[str, Any]:
        """Extra `from_pretrained` arguments: components left out (IP-Adapter's image encoder, which no job uses)."""
        return {"image_encoder": None, "feature_extractor": None, **cls.loaded_with}

    @classmethod
    def build(cls, name: str, spec: ModelSpec):
        """Built-in model `name` from its record: weights from a fixed seed, built-in tokenizers, `load_options`."""
        import diffusers
        arch = ARCHITECTURES[name]
        parts = {**build_components(arch, seed=0), "scheduler": build_scheduler(arch),
                 **{attribute: BUILT_IN_TOKENIZERS[kind]() for attribute, kind in cls.tokenizers.items()},
                 **cls.load_options(spec)}
        for part in parts.values():  # built modules start in training mode: T5's dropout would be on
            if isinstance(part, torch.nn.Module):
                part.eval()
        return getattr(diffusers, cls.pipeline_class)(**parts)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the sampler calls every step: the UNet or the transformer."""
        return getattr(self.pipe, self.denoiser_name)

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        setattr(self.pipe, self.denoiser_name, module)

    @property
    def device(self) -> torch.device:
        """The denoiser's device (diffusers' `pipe.device` walks every module: milliseconds a call)."""
        return next(self.denoiser.parameters()).device

    @property
    def tokenizer(self):
        """The CLIP tokenizer every family has (prompt truncation is counted with it)."""
        return self.pipe.tokenizer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @scheduler.setter
    def scheduler(self, scheduler) -> None:
        self.pipe.scheduler = scheduler

    @property
    def kind(self) -> str:
        """The scheduler kind the model was trained for: epsilon, v_prediction or flow."""
        return model_kind({**self.base_scheduler_config, "_class_name": self.base_scheduler_class})

    @property
    def noise(self) -> NoiseProcess:
        """The noise process of the model's kind: its levels, coefficients, log-SNR and x0 from the model's output."""
        return PROCESSES[self.kind]

    @property
    def vae(self) -> torch.nn.Module:
        """The VAE that encodes images to latents and decodes them back."""
        return self.pipe.vae

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The (first) CLIP text encoder every family has."""
        return self.pipe.text_encoder

    def component(self, name: str):
        """A pipeline component by name (a tokenizer or encoder the family declares), None when it was left out."""
        return getattr(self.pipe, name, None)

    def quiet(self) -> None:
        """No progress bar while this model samples."""
        self.pipe.set_progress_bar_config(disable=True)

    def run_pipeline(self, prompt: str, **options):
        """The family's own diffusers pipeline called as diffusers documents it (a reference for by-hand loops)."""
        return self.pipe(prompt, **options)

    def image_to_image(self):
        """The family's image-to-image pipeline on this model's loaded weights (diffusers' AutoPipeline)."""
        from diffusers import AutoPipelineForImage2Image

        img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
        img2img.set_progress_bar_config(disable=True)
        return img2img

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents."""
        return self.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    @classmethod
    def uses_cfg(cls, guidance_scale: float) -> bool:
        """Whether a step runs the unconditional branch too (never for guidance-distilled models)."""
        return cls.guidance == "cfg" and guidance_scale > 1.0

    @classmethod
    def guidance_group(cls, scale: float) -> tuple:
        """What cells sharing a call agree on: under CFG whether it runs, on a guidance-distilled model the scale."""
        return ("cfg", cls.uses_cfg(scale)) if cls.guidance == "cfg" else ("scale", scale)

    @property
    def sequence_length(self) -> int | None:
        """T5 tokens per prompt: `t5_limit` with the loaded T5 tokenizer's own limit."""
        tokenizer = next((self.component(name) for name, kind in self.tokenizers.items() if kind == "t5"), None)
        return self.t5_limit(self.spec, tokenizer.model_max_length if tokenizer is not None else None)

    @classmethod
    def t5_limit(cls, spec: ModelSpec, tokenizer_limit: int | None) -> int | None:
        """T5 tokens a prompt keeps: `model.max_sequence_length`, else the family's default capped by the tokenizer."""
        if spec.max_sequence_length or tokenizer_limit is None or cls.default_sequence_length is None:
            return spec.max_sequence_length or cls.default_sequence_length
        return min(cls.default_sequence_length, tokenizer_limit)

    def use_scheduler(self, name: str, options: dict[str, Any] | None = None):
        """Swap in scheduler `name` for this model's kind (kept if asked again: `set_timesteps` resets its state)."""
        asked = (name, repr(sorted((options or {}).items())))
        if self.scheduler_made != (asked, self.scheduler):
            self.scheduler = make_scheduler(name, self.base_scheduler_config, options)
            self.scheduler_made = (asked, self.scheduler)
        return self.scheduler

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """The pipeline keyword arguments for prompt `text` (batch 1), encoded once per `generate_batch` call."""
        if text not in self.embeddings:
            with torch.inference_mode():
                self.embeddings[text] = {k: v.detach() for k, v in self._encode(text).items()}
        return self.embeddings[text]

    def _encode(self, text: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def negative_kwargs(self, text: str) -> dict[str, torch.Tensor]:
        """`encode(text)` as the negative prompt: each key prefixed with `negative_`."""
        return {f"negative_{k}": v for k, v in self.encode(text).items()}

    def embeddings_for(self, params) -> dict[str, torch.Tensor]:
        """Every embedding the pipeline takes for one image of `params.prompt` (and the negative, under CFG)."""
        embeddings = dict(self.encode(params.prompt))
        if self.uses_cfg(params.guidance_scale):
            embeddings.update(self.negative_kwargs(params.negative_prompt))
        return embeddings

    def denoise(self, params, generators: list[torch.Generator], embeddings: dict[str, torch.Tensor],
                on_step: Callable[[dict], Any] | None = None, scales: list[float] | None = None) -> torch.Tensor:
        """NCHW latents from the pipeline's sampler loop; `on_step` gets each step, `scales` one per image."""
        n = len(generators)
        guidance = PerImageScale(scales) if scales and len(set(scales)) > 1 else params.guidance_scale
        seed_noise(self.scheduler, generators)
        with StepWatch(self, params, on_step) as watch:
            latents = self.pipe(
                **{k: v if len(v) == n else v.repeat(n, *[1] * (v.dim() - 1)) for k, v in embeddings.items()},
                num_inference_steps=params.num_inference_steps, guidance_scale=guidance, width=params.width,
                height=params.height, generator=generators, output_type="latent",
                callback_on_step_end=watch.callback if on_step else None,
                **{k: getattr(params, k) for k in self.call_options},
                **({"max_sequence_length": self.sequence_length} if self.sequence_length else {})).images
        return self.unpack(latents, params.width, params.height)

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The pipeline's latents (as the denoiser and `callback_on_step_end` see them) as NCHW: unchanged here."""
        return latents

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser latents to the VAE's: z / scaling_factor + shift_factor."""
        config = self.pipe.vae.config
        return latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)

    def scale(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents to the denoiser's: (z - shift_factor) * scaling_factor."""
        config = self.pipe.vae.config
        return (latents - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (NCHW float) from denoiser latents, upcasting the VAE as the family's pipeline does."""
        vae = self.pipe.vae
        upcast = self.upcasts_vae and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            with torch.inference_mode():
                return vae.decode(self.unscale(latents.to(vae.dtype)), return_dict=False)[0].float()
        finally:
            if upcast:
                vae.to(torch.float16)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser latents of images in [-1, 1]: the scaled mean of q(z | x)."""
        vae = self.pipe.vae
        with torch.inference_mode():
            return self.scale(vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean)

    def apply_speed_options(self) -> None:
        """Channels-last, the attention implementation, each network's CPU convolutions and torch.compile, as set."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        spec = self.spec
        if self.denoiser_name == "unet":  # transformers keep their own processors (sdpa already)
            processor = AttnProcessor2_0 if spec.attention == "sdpa" else AttnProcessor
            self.denoiser.set_attn_processor(processor())
            self.pipe.vae.set_attn_processor(processor())
        elif spec.attention != "sdpa":
            raise UserError(f"model.attention={spec.attention} is for UNet models; model={spec.name} is a "
                            f"{self.family} transformer: keep attention=sdpa")
        if spec.channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            self.pipe.vae.to(memory_format=torch.channels_last)
        if spec.compile:
            self.denoiser = torch.compile(self.denoiser)
        switch_per_network(spec, self.denoiser, self.pipe.vae)  # on the compiled module: hooks outside its graph


class StepWatch:
    """Each sampler step as a dict {i, t, level, log_snr, x_t, model_output, denoised, x, capture_s} (NCHW, CPU) from a
    denoiser hook: every DDPM scaled input is the VP x_t, a flow one x_t, so one x0 formula serves every sampler."""

    def __init__(self, model: ModelAdapter, params, on_step: Callable[[dict], Any] | None):
        self.model, self.params, self.on_step = model, params, on_step
        self.last: tuple | None = None
        self.capture_s = 0.0

    def __enter__(self):
        self.handle = self.model.denoiser.register_forward_hook(self.hook, with_kwargs=True) if self.on_step else None
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()

    def hook(self, module, args, kwargs, output):
        start = time.perf_counter()
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = float(torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])
        level = self.model.noise.level(self.model.scheduler, timestep)
        self.last = (sample.detach().clone(), level, output[0].detach().clone())
        self.capture_s += time.perf_counter() - start

    def callback(self, pipe, i: int, timestep, callback_kwargs: dict) -> dict:
        """`callback_on_step_end`: the step's dict to `on_step`."""
        start = time.perf_counter()
        sample, level, output = self.last
        latents = callback_kwargs["latents"]
        if output.shape[0] == 2 * latents.shape[0]:  # classifier-free guidance: uncond and cond in one batch
            uncond, cond = output.chunk(2)
            output, sample = guided(uncond, cond, self.params.guidance_scale), sample.chunk(2)[1]
        nchw = lambda x: self.model.unpack(x.detach().float(), self.params.width, self.params.height).cpu()  # noqa: E731
        noise = self.model.noise
        x_t, output = nchw(sample), nchw(output)
        step = {"i": i, "t": float(torch.as_tensor(timestep).flatten()[0]), **level, "log_snr": noise.log_snr(level),
                "x_t": x_t, "model_output": output, "denoised": noise.x0(x_t, output, level), "x": nchw(latents)}
        step["capture_s"], self.capture_s = self.capture_s + time.perf_counter() - start, 0.0
        self.on_step(step)
        return callback_kwargs
