"""Distances between two (n, d) sets of image features as the papers define them: Fréchet distance, KID, CMMD,
precision/recall; the feature extractor is the caller's, and its name belongs beside the number."""

from __future__ import annotations

import numpy as np

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0  # the CMMD paper's bandwidth and scale (Jayasumana et al. 2024)


def _features(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be an (n >= 2, d) array, got shape {x.shape}")
    return x


def frechet_distance(generated, reference) -> float:
    """Fréchet distance (Heusel et al. 2017, eq. 6), covariances n - 1, Tr root by eig(S_g S_r) as torchmetrics."""
    g, r = _features(generated), _features(reference)
    mean = float(np.sum((g.mean(0) - r.mean(0)) ** 2))
    cov_g, cov_r = np.atleast_2d(np.cov(g, rowvar=False)), np.atleast_2d(np.cov(r, rowvar=False))
    root_trace = float(np.sqrt(np.linalg.eigvals(cov_g @ cov_r).astype(complex)).real.sum())
    return mean + float(np.trace(cov_g) + np.trace(cov_r)) - 2.0 * root_trace


def _mmd_unbiased(k_gg: np.ndarray, k_rr: np.ndarray, k_gr: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, eq. 3): diagonals left out of the within-set means."""
    m, n = len(k_gg), len(k_rr)
    within = (k_gg.sum() - np.trace(k_gg)) / (m * (m - 1)) + (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
    return float(within - 2.0 * k_gr.mean())


def kid(generated, reference, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD^2, kernel (x.y / d + 1)^3, on random subsets; (mean, std)."""
    g, r = _features(generated), _features(reference)
    size = min(subset_size, len(g), len(r))
    rng = np.random.default_rng(seed)
    kernel = lambda x, y: (x @ y.T / g.shape[1] + 1.0) ** 3  # noqa: E731
    draws = ((g[rng.permutation(len(g))[:size]], r[rng.permutation(len(r))[:size]]) for _ in range(subsets))
    scores = [_mmd_unbiased(kernel(a, a), kernel(b, b), kernel(a, b)) for a, b in draws]
    return float(np.mean(scores)), float(np.std(scores))


def cmmd(generated, reference, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD (Jayasumana et al. 2024): `scale` x MMD^2, Gaussian kernel exp(-|x - y|^2 / (2 sigma^2)), diagonals kept."""
    g, r = _features(generated), _features(reference)

    def mean_kernel(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.exp(-_squared_distances(x, y) / (2.0 * sigma**2)).mean())

    return scale * (mean_kernel(g, g) + mean_kernel(r, r) - 2.0 * mean_kernel(g, r))


def clip_cmmd(generated, reference) -> float:
    """CMMD on unit-length CLIP embeddings, as the CMMD paper's code feeds them (Jayasumana et al. 2024)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return cmmd(unit(_features(generated)), unit(_features(reference)))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T, 0.0)


def _coverage(support: np.ndarray, probes: np.ndarray, k: int) -> float:
    """Share of `probes` within some support point's distance to its k-th nearest other support point."""
    radii = np.sort(np.sqrt(_squared_distances(support, support)), axis=1)[:, k]  # column 0 is the point itself
    return float((np.sqrt(_squared_distances(probes, support)) <= radii[None, :]).any(axis=1).mean())


def precision_recall(generated, reference, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019): generated in the reference k-NN manifold, and back."""
    g, r = _features(generated), _features(reference)
    if min(len(g), len(r)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got {len(g)} and {len(r)}")
    return _coverage(r, g, k), _coverage(g, r, k)
