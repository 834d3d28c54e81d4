"""`sdlab --help` and `sdlab --version`, read from conf/ and package metadata without importing torch or diffusers."""

from __future__ import annotations

import re
import sys
import textwrap
from itertools import dropwhile, takewhile
from pathlib import Path

from sdlab.app.arguments import PROMPT_FILE_KEY
from sdlab.bench.records import package_version
from sdlab.conf_files import CONF_DIR, group_options

VERSIONED = ("torch", "diffusers", "transformers", "hydra-core", "pandas")


def first_comment(path: Path) -> str:
    """The first comment paragraph of a YAML file (Hydra directives and indented example lines aside), as one line."""
    lines = [line for line in path.read_text().splitlines() if "@package" not in line]
    comment = dropwhile(lambda line: not line.startswith("#"), lines)
    paragraph = takewhile(lambda line: line.startswith("# ") and not line.startswith("#  "), comment)
    return " ".join(line[2:].strip() for line in paragraph)


def base_keys() -> list[tuple[str, str]]:
    """(key, description) of conf/config.yaml's top-level keys, from their trailing comments."""
    keys = []
    for line in (CONF_DIR / "config.yaml").read_text().splitlines():
        match = re.match(r"^([a-z_]+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if match and match.group(1) not in ("defaults", "hydra", "job"):
            key, default, comment = match.groups()
            keys.append([key, comment or f"default {default}"])
        elif keys and re.match(r"^\s+#   ", line):  # the comment of the key above goes on
            keys[-1][1] += " " + line.split("#", 1)[1].strip()
    return [(key, shorten(text, 110)) for key, text in keys]


def listing(group: str, describe: bool) -> list[str]:
    """Options of a config group, one per line with its description."""
    folder = CONF_DIR / group
    names = group_options(group)
    if not describe:
        return textwrap.wrap(", ".join(names), 110, initial_indent="  ", subsequent_indent="  ")
    width = max(map(len, names))
    return [f"  {name:<{width}}  {shorten(first_comment(folder / f'{name}.yaml'), 110 - width)}" for name in names]


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, with '...' when cut."""
    if len(text) <= limit:
        return text
    return text[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def help_text() -> str:
    """The whole `sdlab --help` page."""
    keys = base_keys() + [(PROMPT_FILE_KEY, "a text file of prompts, one per line; with -m one job per prompt")]
    width = max(len(k) for k, _ in keys)
    lines = [
        "sdlab: batch experiments and analyses for latent diffusion models",
        "",
        "usage: sdlab [-m] [KEY=VALUE ...]         run the default job, or a sweep with -m",
        "       sdlab report DIR                   rebuild the summary and report of a run or sweep dir",
        "       sdlab --help | --version | -sc install=bash",
        "",
        "examples:",
        '  sdlab prompt="a red circle, on a blue background" seed=7 scheduler=euler',
        "  sdlab -m seed=1,2 guidance_scale=1,7.5 scheduler=ddim,dpmpp_2m",
        "  sdlab -m seed=1,2 guidance_scale=1,7.5 scheduler=ddim,dpmpp_2m plan=true   # cells, batches, time; no run",
        "  sdlab -m prompt_file=prompts.txt seed=1,2",
        "  sdlab experiment=compare_schedulers_quick",
        "",
        "main keys:",
        *(f"  {k:<{width}}  {d}" for k, d in keys),
        "",
        "models (model=NAME; model.path=DIR for any diffusers folder):",
        *listing("model", True),
        "",
        "schedulers (scheduler=NAME; options such as scheduler.timestep_spacing=trailing):",
        *listing("scheduler", False),
        "",
        "CLIP for clip_score (clip=NAME):",
        *listing("clip", True),
        "",
        "experiments (experiment=NAME; experiments/README.md has each one's outputs):",
        *listing("experiment", True),
        "",
        "Hydra: -m/--multirun sweeps comma lists, range(a,b) and glob(pattern); --cfg job prints the config;",
        "hydra.run.dir=DIR and hydra.sweep.dir=DIR choose the output folder; --hydra-help lists Hydra's flags.",
    ]
    return "\n".join(lines)


def version_text() -> str:
    """`sdlab X.Y.Z` and the versions of the libraries that decide its numbers."""
    python = ".".join(map(str, sys.version_info[:3]))
    deps = ", ".join(f"{name} {package_version(name) or 'not installed'}" for name in VERSIONED)
    return f"sdlab {package_version('sdlab') or 'not installed'} (python {python}, {deps})"
