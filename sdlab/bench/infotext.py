"""Image-tool parameter formats: the A1111 infotext PNG chunk and A1111's JSON names, to and from sdlab's."""

from __future__ import annotations

import re
from typing import Any

from sdlab.errors import UserError

# sdlab scheduler -> A1111 sampler name (the combined "Name Karras" form every PNG-info reader parses)
SAMPLER_NAMES = {
    "ddim": "DDIM", "ddpm": "DDPM", "pndm": "PLMS", "lms": "LMS", "lms_karras": "LMS Karras", "euler": "Euler",
    "euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "dpmpp_sde": "DPM++ SDE", "unipc": "UniPC", "deis": "DEIS",
}
SCHEDULERS_BY_SAMPLER = {v.lower(): k for k, v in SAMPLER_NAMES.items()}
SCHEDULE_TYPES = ("automatic", "uniform", "karras")  # A1111's separate "Schedule type" that sdlab can honour
A1111_KEYS = {"steps": "num_inference_steps", "cfg_scale": "guidance_scale", "sampler_name": "scheduler",
              "sampler_index": "scheduler"}
# The infotext's labels in the order image tools write them, and sdlab's name for each ("Model" is their checkpoint
# name, and "Version" theirs: written, never read back; "Size" is read as width and height)
INFOTEXT_KEYS = {"Steps": "num_inference_steps", "Sampler": "scheduler", "Schedule type": "schedule_type",
                 "CFG scale": "guidance_scale", "Seed": "seed", "Size": "size", "Model": "model", "Eta": "eta",
                 "Version": "version"}
READ_KEYS = {label.lower(): name for label, name in INFOTEXT_KEYS.items() if label not in ("Size", "Model", "Version")}


def sampler_to_scheduler(sampler: str, schedule_type: str | None = None) -> str:
    """An A1111 sampler name (and optional schedule type, e.g. "Karras") as an sdlab scheduler name."""
    name = sampler.strip().lower()
    if schedule_type and schedule_type.strip().lower() == "karras" and not name.endswith("karras"):
        name += " karras"
    elif schedule_type and schedule_type.strip().lower() not in SCHEDULE_TYPES:
        raise UserError(f"schedule type {schedule_type!r} is not supported; choose one of: Automatic, Uniform, Karras")
    if name in SCHEDULERS_BY_SAMPLER:
        return SCHEDULERS_BY_SAMPLER[name]
    if name.replace(" ", "_") in SAMPLER_NAMES:
        return name.replace(" ", "_")
    raise UserError(f"sampler {sampler!r} has no sdlab scheduler; choose one of: {', '.join(SAMPLER_NAMES.values())}")


def from_a1111(data: dict[str, Any]) -> dict[str, Any]:
    """A params dict with A1111's names (steps, cfg_scale, sampler_name, scheduler="Karras") in sdlab's."""
    data = dict(data)
    schedule_type = None
    if "scheduler" in data and isinstance(data["scheduler"], str) and ("sampler_name" in data or "sampler_index" in data):
        schedule_type = data.pop("scheduler")  # A1111 >= 1.9: the schedule type, beside sampler_name
    out = {}
    for key, value in data.items():
        target = A1111_KEYS.get(key, key)
        if target in out:
            named = [k for k in data if A1111_KEYS.get(k, k) == target]
            raise UserError(f"params give both {named[0]!r} and {named[1]!r}; keep one")
        if target == "scheduler" and key != "scheduler":
            if not isinstance(value, str):
                raise UserError(f"{key}={value!r} should be a sampler name such as 'DPM++ 2M Karras'")
            value = sampler_to_scheduler(value, schedule_type)
        out[target] = value
    return out


def format_infotext(meta: dict[str, Any]) -> str:
    """The A1111 `parameters` text: prompt, `Negative prompt:` line, then `Steps: N, Sampler: ..., ...`."""
    shown = {**meta, "scheduler": SAMPLER_NAMES.get(meta.get("scheduler"), meta.get("scheduler")),
             "size": f"{meta.get('width')}x{meta.get('height')}", "eta": meta.get("eta") or None,
             "version": meta.get("version") or None}
    fields = {label: shown.get(name) for label, name in INFOTEXT_KEYS.items()}
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_infotext(text: str) -> dict[str, Any]:
    """sdlab params from an A1111 `parameters` text (the inverse of `format_infotext` for the keys sdlab knows)."""
    lines = text.strip().splitlines()
    if not lines or not re.match(r"^Steps: ", lines[-1]):
        raise UserError("the PNG's parameters text has no 'Steps: ...' line; it was not written by an image tool")
    *body, settings = lines
    prompt, negative = [], []
    for line in body:
        if line.startswith("Negative prompt:") or negative:
            negative.append(line.removeprefix("Negative prompt:").strip())
        else:
            prompt.append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r'\s*([\w \-/]+):\s*("(?:[^"\\]|\\.)*"|[^,]*)',
                                                                  settings)}
    for key, value in fields.items():
        if key == "size" and re.fullmatch(r"\d+x\d+", value):
            out["width"], out["height"] = map(int, value.split("x"))
        elif key in READ_KEYS:
            out[READ_KEYS[key]] = _number(value) if key not in ("sampler", "schedule type") else value
    if "scheduler" in out:
        out["scheduler"] = sampler_to_scheduler(out["scheduler"], out.pop("schedule_type", None))
    out.pop("schedule_type", None)
    return out
