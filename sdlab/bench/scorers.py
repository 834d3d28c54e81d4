"""Scores of generated images: scorers built from config (`scorers: [clip, fd]`), registered by name here or through
the `sdlab.scorers` entry points. A set scorer (fd, kid, cmmd, precision_recall) stores each image's features and its
reference set's key in its row; its `statistic` compares a slice with its references in the summary."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sdlab.bench.plugins import installed
from sdlab.bench.references import check_reference, reference_key
from sdlab.config import config_hash
from sdlab.errors import UserError
from sdlab.metrics.distribution import clip_cmmd, frechet_distance, kid, precision_recall
from sdlab.models.clip import clip_weights, load_clip

ENTRY_POINTS = "sdlab.scorers"
Score = Callable[[Sequence, Sequence[str]], list[dict[str, Any]]]  # (images, prompts) -> one dict of columns per image
KID_SUBSETS = 10  # KID's subsets per estimate: the summary's bootstrap repeats it, and 100 would take minutes


@dataclass(frozen=True)
class ScorerKind:
    """A registered scorer: its columns and direction, known before it is built, and how to build it for a run."""

    build: Callable[[dict, str], Score]      # (config, device) -> score
    columns: tuple[str, ...]                 # the row columns it writes; a name ending in "_" stands for a family
    higher_is_better: bool = True
    identity: Callable[[dict], Any] = lambda cfg: None  # what besides the image decides its numbers (cell hash)
    statistic: Callable[[np.ndarray, np.ndarray], tuple[float, ...]] | None = None  # a set scorer's, one per column
    min_n: int = 0      # a set scorer's least images per set: a smaller reference is refused, a smaller slice unscored
    advised_n: int = 0  # a set scorer's images per set below which the summary warns
    weights: Callable[[dict], str | None] = lambda cfg: None  # the fingerprint of the weights it scores with

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


def configured(cfg: dict) -> dict[str, ScorerKind]:
    """The `scorers:` list of a config, each a registered name (one error line otherwise), with its kind."""
    names = cfg.get("scorers") or []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise UserError(f"scorers={names!r} must be a list of scorer names, e.g. scorers=[clip]")
    known = registered()
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in known:
            raise UserError(f"unknown scorer {name!r}; scorers are: {', '.join(sorted(known))}")
        if name in names[:i]:  # it scores once: the list said otherwise
            raise UserError(f"scorers={list(names)} lists {name} twice; list each scorer once")
    return {name: known[name] for name in names}


def set_scorers(cfg: dict) -> dict[str, ScorerKind]:
    """The configured set scorers, by name."""
    return {name: kind for name, kind in configured(cfg).items() if kind.statistic is not None}


def check_reference_read(cfgs: Sequence[dict]) -> None:
    """Each `reference=DIR` given is read by a set scorer in some job of `cfgs` (a run's or sweep's), else an error."""
    scorers: dict[str, dict[str, None]] = {}  # each reference given -> its jobs' scorers, until a set scorer reads it
    read = set()
    for cfg in cfgs:
        if cfg.get("reference") is not None:
            reference = str(cfg["reference"])
            scorers.setdefault(reference, {}).update(dict.fromkeys(configured(cfg)))
            read.update([reference] if set_scorers(cfg) else [])
    for reference, names in scorers.items():
        if reference not in read:
            sets = ", ".join(sorted(name for name, kind in registered().items() if kind.statistic is not None))
            raise UserError(f"reference={reference} is read by the set scorers only ({sets}), and "
                            f"scorers=[{','.join(names)}] has none: add one (scorers=[clip,fd]) or drop reference=")


def check_set_scorers(cfg: dict, width: int, height: int) -> None:
    """The set scorers asked for have features (a CLIP model) and a reference set that fits: one error line if not."""
    needed = {name: kind.min_n for name, kind in set_scorers(cfg).items()}
    if needed and (cfg.get("clip") or {}).get("name") in (None, "none"):
        raise UserError(f"scorers {', '.join(needed)} compare CLIP image features, and clip=none has none; "
                        "pick clip=mini (or clip=openai_l14 from the local cache)")
    check_reference(cfg, width, height, needed)


def build_scorers(cfg: dict, device: str = "cpu") -> list[Scorer]:
    """The configured scorers, built for a run (their models load once per process)."""
    return [Scorer(name, kind, kind.build(cfg, device), kind.identity(cfg)) for name, kind in configured(cfg).items()]


def scorer_identities(cfg: dict) -> dict[str, Any]:
    """`identities` of the configured scorers, without building them."""
    return {name: kind.identity(cfg) for name, kind in configured(cfg).items()}


def score_images(scorers: Sequence[Scorer], images: Sequence, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Every scorer's columns for each image, merged into one dict per image (set scorers share one feature step)."""
    rows: list[dict[str, Any]] = [{} for _ in images]
    for scorer in {id(scorer.score): scorer for scorer in scorers}.values():
        for row, columns in zip(rows, scorer.score(images, prompts) if len(images) else []):
            row.update(columns)
    return rows


def scorer_weights(cfg: dict) -> dict[str, str]:
    """The fingerprint of the weights each configured scorer scores with, by scorer name (those with weights)."""
    found = {name: kind.weights(cfg) for name, kind in configured(cfg).items()}
    return {name: weights for name, weights in found.items() if weights is not None}


def identities(scorers: Sequence[Scorer]) -> dict[str, Any]:
    """What decides the scorers' numbers, by scorer name (part of a cell's hash)."""
    return {scorer.name: scorer.identity for scorer in scorers}


def direction(column: str) -> int:
    """+1 when a registered scorer writes `column` and higher is better, -1 when lower is, 0 for no scorer's column."""
    kind = next((kind for kind in registered().values() if kind.writes(column)), None)
    return 0 if kind is None else 1 if kind.higher_is_better else -1


def clip_score(cfg: dict, device: str) -> Score:
    """CLIP score (Hessel et al. 2021) of each image against its prompt (clip=none: empty) and seconds per image."""
    clip = load_clip(cfg.get("clip"), device=device)

    def score(images, prompts) -> list[dict[str, Any]]:
        if clip is None:
            return [{"clip_score": None, "time_clip_s": None} for _ in images]
        start = time.perf_counter()
        values = clip.clip_score(list(images), list(prompts))
        seconds = (time.perf_counter() - start) / len(images)
        return [{"clip_score": value, "time_clip_s": seconds} for value in values]

    return score


register("clip", ScorerKind(clip_score, ("clip_score",), identity=lambda cfg: cfg.get("clip"),
                            weights=lambda cfg: clip_weights(cfg.get("clip"))))


def encode_features(x: np.ndarray) -> str:
    """One image's features as text for its row: float32 bytes, base64."""
    return base64.b64encode(np.asarray(x, dtype="<f4").tobytes()).decode("ascii")


def decode_features(text: Any) -> np.ndarray | None:
    """The features `encode_features` wrote; None for a cell of a table that holds none."""
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float64)
    except (TypeError, ValueError):
        return None


_FEATURE_SCORES: dict[str, Score] = {}


def feature_score(cfg: dict, device: str) -> Score:
    """The set scorers' one feature step: per image, its `clip` embedding (the CMMD paper's features; FD and KID's
    papers used Inception's), the extractor's name, and its prompt's reference set key."""
    names = " ".join(set_scorers(cfg))
    memo = config_hash({"clip": cfg.get("clip"), "device": device, "names": names, "identity": set_identity(cfg),
                        "weights": clip_weights(cfg.get("clip"))})
    if memo in _FEATURE_SCORES:
        return _FEATURE_SCORES[memo]
    clip = load_clip(cfg.get("clip"), device=device)
    extractor = f"clip_{clip.name}"

    def score(images, prompts) -> list[dict[str, Any]]:
        images = [np.asarray(image) for image in images]
        side = (images[0].shape[1], images[0].shape[0])
        keys = {p: reference_key(cfg, p, side, extractor, clip.image_embeddings) for p in dict.fromkeys(prompts)}
        return [{"features": extractor, "image_features": encode_features(x), "reference": keys[p],
                 "set_metrics": names} for x, p in zip(clip.image_embeddings(images), prompts)]

    _FEATURE_SCORES[memo] = score
    return score


def set_identity(cfg: dict) -> Any:
    """What decides a set scorer's row: the extractor and the reference set."""
    return [cfg.get("clip"), cfg.get("reference"), cfg.get("reference_count")]


def unit_cmmd(generated: np.ndarray, reference: np.ndarray) -> tuple[float]:
    """CMMD on unit-length embeddings, as the CMMD paper's code feeds them."""
    return (clip_cmmd(generated, reference),)


def set_kind(statistic, columns: tuple[str, ...], min_n: int, advised_n: int, higher: bool = False) -> ScorerKind:
    """A set scorer: the feature step at cell time, `statistic` on a slice where the summary is made."""
    return ScorerKind(feature_score, columns, higher, set_identity, statistic, min_n, advised_n,
                      lambda cfg: clip_weights(cfg.get("clip")))


# Least images per set (the estimator's own) and advised ones (README, "Distribution metrics").
register("fd", set_kind(lambda g, r: (frechet_distance(g, r),), ("fd",), 2, 100))
register("kid", set_kind(lambda g, r: (kid(g, r, subsets=KID_SUBSETS)[0],), ("kid",), 2, 50))
register("cmmd", set_kind(unit_cmmd, ("cmmd",), 2, 50))
register("precision_recall", set_kind(precision_recall, ("precision", "recall"), 4, 50, higher=True))
