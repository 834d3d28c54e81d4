"""Scores of generated images: one list built from config (`scorers: [clip, shapes_adherence]`), each scorer a function
of images and prompts that declares its columns, which way is better and what decides its numbers.

A scorer is registered by name, here or through the `sdlab.scorers` entry point group (the embedded model's world adds
`shapes_adherence` that way): a new metric is one registered ScorerKind and one config line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sdlab.bench.plugins import installed
from sdlab.errors import UserError
from sdlab.models.clip import load_clip

ENTRY_POINTS = "sdlab.scorers"
Score = Callable[[Sequence, Sequence[str]], list[dict[str, Any]]]  # (images, prompts) -> one dict of columns per image


@dataclass(frozen=True)
class ScorerKind:
    """A registered scorer: its columns and direction, known before it is built, and how to build it for a run."""

    build: Callable[[dict, str], Score]      # (config, device) -> score
    columns: tuple[str, ...]                 # the row columns it writes; a name ending in "_" stands for a family
    higher_is_better: bool = True
    identity: Callable[[dict], Any] = lambda cfg: None  # what besides the image decides its numbers (cell hash)

    def writes(self, column: str) -> bool:
        """True when `column` is one of this scorer's."""
        return any(column == c or (c.endswith("_") and column.startswith(c)) for c in self.columns)


@dataclass(frozen=True)
class Scorer:
    """A scorer built for one run."""

    name: str
    kind: ScorerKind
    score: Score
    identity: Any


KINDS: dict[str, ScorerKind] = {}


def register(name: str, kind: ScorerKind) -> None:
    """Make scorer `name` available to `scorers: [...]`."""
    KINDS[name] = kind


def registered() -> dict[str, ScorerKind]:
    """Every registered scorer, those of installed plugins (the `sdlab.scorers` entry points) included."""
    return {**installed(ENTRY_POINTS), **KINDS}


def scorer_names(cfg: dict) -> list[str]:
    """The `scorers:` list of a config, each a registered name (one error line otherwise)."""
    names = cfg.get("scorers") or []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise UserError(f"scorers={names!r} must be a list of scorer names, e.g. scorers=[clip]")
    known = registered()
    for name in names:
        if name not in known:
            raise UserError(f"unknown scorer {name!r}; scorers are: {', '.join(sorted(known))}")
    return list(dict.fromkeys(names))


def build_scorers(cfg: dict, device: str = "cpu") -> list[Scorer]:
    """The configured scorers, built for a run (their models load once per process)."""
    kinds = registered()
    return [Scorer(name, kinds[name], kinds[name].build(cfg, device), kinds[name].identity(cfg))
            for name in scorer_names(cfg)]


def score_images(scorers: Sequence[Scorer], images: Sequence, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Every scorer's columns for each image, merged into one dict per image."""
    rows: list[dict[str, Any]] = [{} for _ in images]
    for scorer in scorers:
        for row, columns in zip(rows, scorer.score(images, prompts) if len(images) else []):
            row.update(columns)
    return rows


def identities(scorers: Sequence[Scorer]) -> dict[str, Any]:
    """What decides the scorers' numbers, by scorer name (part of a cell's hash)."""
    return {scorer.name: scorer.identity for scorer in scorers}


def direction(column: str) -> int:
    """+1 when a registered scorer writes `column` and higher is better, -1 when lower is, 0 for no scorer's column."""
    for kind in registered().values():
        if kind.writes(column):
            return 1 if kind.higher_is_better else -1
    return 0


def clip_score(cfg: dict, device: str) -> Score:
    """CLIP score (Hessel et al. 2021) of each image against its prompt with the `clip` model (none: empty columns),
    and the seconds it took per image."""
    clip = load_clip(cfg.get("clip"), device=device)

    def score(images, prompts) -> list[dict[str, Any]]:
        if clip is None:
            return [{"clip_score": None, "time_clip_s": None} for _ in images]
        start = time.perf_counter()
        values = clip.clip_score(list(images), list(prompts))
        seconds = (time.perf_counter() - start) / len(images)
        return [{"clip_score": value, "time_clip_s": seconds} for value in values]

    return score


register("clip", ScorerKind(clip_score, ("clip_score",), identity=lambda cfg: cfg.get("clip")))
