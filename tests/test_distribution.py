"""Distribution metrics: FD and KID as torchmetrics computes them, CMMD and precision/recall against closed forms, and
the set scorers per swept slice in a sweep's summary and report, with one error line for a reference that cannot be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sdlab.bench.scorers import decode_features, direction, encode_features
from sdlab.metrics.distribution import cmmd, frechet_distance, kid, precision_recall
from sdlab.metrics.stats import bootstrap_ci

MINI = ("num_inference_steps=2", "threads=1", "reference_count=8")


def gaussian(n: int, d: int, mean: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, scale, size=(n, d))


def test_fd_and_kid_agree_with_torchmetrics_on_the_same_features():
    torch = pytest.importorskip("torch")
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd

    g, r = gaussian(200, 16, 0.3, 1.2, seed=1), gaussian(150, 16, seed=2) @ gaussian(16, 16, seed=3) / 4
    t = lambda x: torch.from_numpy(x).double()  # noqa: E731
    expected_fd = float(_compute_fid(t(g).mean(0), t(g).T.cov(), t(r).mean(0), t(r).T.cov()))
    assert frechet_distance(g, r) == pytest.approx(expected_fd, rel=1e-4)
    # KernelInceptionDistance.compute: poly_mmd on `subsets` random subsets of equal size, their mean and
    # population std; fed the subsets sdlab's kid draws (its seeded permutations)
    rng, scores = np.random.default_rng(0), []
    for _ in range(20):
        a, b = g[rng.permutation(len(g))[:100]], r[rng.permutation(len(r))[:100]]
        scores.append(poly_mmd(t(b), t(a)))
    expected_mean, expected_std = torch.stack(scores).mean(), torch.stack(scores).std(unbiased=False)
    mean, spread = kid(g, r, subsets=20, subset_size=100, seed=0)
    assert mean == pytest.approx(float(expected_mean), rel=1e-4) and spread == pytest.approx(float(expected_std), rel=1e-4)


def expected_gaussian_kernel(d: int, s1: float, s2: float, distance: float, sigma: float) -> float:
    """E exp(-|x - y|^2 / (2 sigma^2)) for x ~ N(a, s1^2 I), y ~ N(b, s2^2 I) in d dims, |a - b| = distance."""
    spread = sigma**2 + s1**2 + s2**2
    return (sigma**2 / spread) ** (d / 2) * np.exp(-distance**2 / (2 * spread))


def test_cmmd_matches_the_closed_form_of_gaussian_kernels_between_gaussians():
    d, n, m, sigma = 4, 1500, 1200, 10.0
    g, r = gaussian(n, d, 0.0, 6.0, seed=4), gaussian(m, d, 3.0, 4.0, seed=5)
    k = lambda s1, s2, dist: expected_gaussian_kernel(d, s1, s2, dist, sigma)  # noqa: E731
    within = lambda count, s: 1 / count + (1 - 1 / count) * k(s, s, 0.0)  # noqa: E731 - the estimator keeps i == j
    closed = 1000 * (within(n, 6.0) + within(m, 4.0) - 2 * k(6.0, 4.0, 3.0 * np.sqrt(d)))
    assert cmmd(g, r, sigma=sigma) == pytest.approx(closed, rel=0.05)
    assert abs(cmmd(g, gaussian(m, d, 0.0, 6.0, seed=6), sigma=sigma) - 1000 * (1 / n + 1 / m) * (1 - k(6.0, 6.0, 0))) < 1.0


def test_precision_and_recall_are_the_shares_of_covered_mass_between_gaussian_modes():
    """Reference: two far-apart modes of equal mass. A model that drops one mode has precision 1 and recall 1/2; one
    that adds a third mode, of a third of its images, has precision 2/3 and recall 1 (Kynkaenniemi et al. 2019, fig. 1)."""
    modes = lambda n, centres, seed: np.concatenate(  # noqa: E731
        [gaussian(n, 2, c, seed=seed + i) for i, c in enumerate(centres)])
    reference = modes(600, (0.0, 50.0), 10)
    covered, recall = precision_recall(modes(600, (0.0,), 20), reference)  # within a mode, k-NN balls miss its tail
    assert covered > 0.95 and recall == pytest.approx(0.5 * covered, abs=0.02)
    precision, recall = precision_recall(modes(400, (0.0, 50.0, -50.0), 30), reference)
    assert precision == pytest.approx(2 / 3 * covered, abs=0.02) and recall == pytest.approx(covered, abs=0.02)


def test_bootstrap_interval_covers_the_value_and_says_nothing_below_three_images():
    g, r = gaussian(40, 3, 0.5, seed=7), gaussian(60, 3, seed=8)
    [(lo, hi)] = bootstrap_ci(lambda a, b: (frechet_distance(a, b),), g, r)
    assert lo < frechet_distance(g, r) < hi
    assert np.isnan(bootstrap_ci(lambda a, b: (frechet_distance(a, b),), g[:2], r)[0][0])


def test_features_round_trip_through_a_row_and_set_scorers_declare_their_direction():
    x = gaussian(1, 64, seed=9)[0]
    assert np.allclose(decode_features(encode_features(x)), x, rtol=1e-6)
    assert [direction(c) for c in ("fd", "kid", "cmmd", "precision", "recall")] == [-1, -1, -1, 1, 1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Reference features cached under the test's folder, and a working dir of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "cache" / "sdlab" / "references"


def test_a_sweep_summarises_set_metrics_per_swept_value_with_n_intervals_and_warnings(run_sdlab, cache):
    assert run_sdlab("-m", "guidance_scale=1,7.5", "seeds=[0,1,2]", "scorers=[clip,fd,kid,cmmd,precision_recall]",
                     "hydra.sweep.dir=s", *MINI) == 0
    summary = pd.read_csv("s/summary.csv")
    sets = summary[summary["features"].notna()]
    assert set(sets["features"]) == {"clip_mini"} and len(list(cache.glob("*.npy"))) == 1
    for value in ("1", "7.5"):
        mine = sets[(sets["parameter"] == "guidance_scale") & (sets["value"].astype(str) == value)]
        assert set(mine["metric"]) == {"fd", "kid", "cmmd", "precision", "recall"}
        fd = mine[mine["metric"].isin(["fd", "kid", "cmmd"])]
        assert (fd["n"] == 3).all() and (fd["n_reference"] == 8).all()
        assert (fd["lo"] <= fd["mean"]).all() and (fd["mean"] <= fd["hi"]).all()
        assert fd["warning"].str.contains("needs about").all()
        pr = mine[mine["metric"] == "precision"].iloc[0]  # k=3 neighbours need 4 images
        assert np.isnan(pr["mean"]) and "needs at least 4" in pr["warning"]
    assert (sets.loc[(sets["parameter"] == "(all)") & (sets["metric"] == "fd"), "n"] == 6).all()
    page = open("s/report.html").read()
    assert "Distribution metrics" in page and '"metric":"fd"' in page and '"features":"clip_mini"' in page
    assert '"image_features"' not in page  # the stored features stay in the table, not on the page
    for npy in cache.glob("*.npy"):  # a cleared cache: the summary says so instead of failing
        npy.unlink()
    assert run_sdlab("report", "s") == 0
    sets = pd.read_csv("s/summary.csv").dropna(subset=["features"])
    assert sets["mean"].isna().all() and sets["warning"].str.contains("is not in").all()


def write_images(folder, count: int, side: int):
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (side, side), (i * 40, 0, 0)).save(folder / f"real{i}.png")
    return folder


def test_a_folder_of_the_users_images_is_a_reference(run_sdlab, cache, tmp_path):
    real = write_images(tmp_path / "real", 5, 64)
    assert run_sdlab("seeds=[0,1,2]", f"reference={real}", "scorers=[fd,cmmd]", "hydra.run.dir=r", *MINI) == 0
    sets = pd.read_csv("r/summary.csv").dropna(subset=["features"])
    assert set(sets["metric"]) == {"fd", "cmmd"} and (sets["n_reference"] == 5).all()


def test_a_reference_that_cannot_be_is_one_line_and_nothing_is_written(run_sdlab, cache, tmp_path, capsys):
    few, small = write_images(tmp_path / "few", 3, 64), write_images(tmp_path / "small", 4, 32)
    cut = write_images(tmp_path / "cut", 8, 64)
    (cut / "real3.png").write_bytes((cut / "real3.png").read_bytes()[:-20])  # the image data runs short of its end
    cases = [
        (("reference=/nonexistent/real",), "reference=/nonexistent/real: no such folder"),
        ((f"reference={few}",), f"reference={few} has 3 images (reference_count=8); scorer precision_recall needs at least 4"),
        ((f"reference={small}",), "is 32x32 px, the generated images 64x64; give references of the generated size"),
        ((f"reference={cut}",), f"reference image {cut / 'real3.png'} is not a readable PNG or JPEG image (image file "
                                "is truncated)"),
        (("reference_count=3",), "reference_count=3 is too small: scorer precision_recall needs at least 4"),
        (("reference_count=0",), "reference_count=0 must be in [1, 100000]"),
        (("clip=none",), "scorers fd, precision_recall compare CLIP image features, and clip=none has none"),
        (("prompt=an oil painting",), "prompt='an oil painting' names nothing the shapes world renders"),
        (("scorers=[fd,fid]",), "unknown scorer 'fid'; scorers are: clip, cmmd, fd, kid, precision_recall, shapes_adherence"),
    ]
    for args, fragment in [*cases, (("-m", "seed=0,1", "reference=/nonexistent/real"), "no such folder")]:
        assert run_sdlab("scorers=[fd,precision_recall]", *MINI, *args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sdlab: error: ") and fragment in err[0], (args, err)
    assert list((tmp_path / "work").iterdir()) == [] and not cache.exists()


def test_a_reference_without_a_set_scorer_is_refused_not_ignored(run_sdlab, cache, tmp_path, capsys):
    """In a single run, and in a sweep none of whose jobs has a set scorer (named by the scorers the sweep has)."""
    real = write_images(tmp_path / "real", 4, 64)
    for args, named in [((), "[clip,shapes_adherence]"), (("scorers=[clip]",), "[clip]"),
                        (("-m", "seed=0,1", "scorers=[clip]", "hydra.sweep.dir=s"), "[clip]"),
                        (("-m", "scorers=[clip],[clip,shapes_adherence]", "hydra.sweep.dir=s"),
                         "[clip,shapes_adherence]")]:
        assert run_sdlab(*args, f"reference={real}", *MINI) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"sdlab: error: reference={real} is read by the set scorers only (cmmd, fd, kid, "
                       f"precision_recall), and scorers={named} has none: add one (scorers=[clip,fd]) or drop "
                       "reference="], err
    assert list((tmp_path / "work").iterdir()) == []


def test_a_sweep_whose_set_scorer_jobs_read_the_reference_runs_every_job(run_sdlab, cache, tmp_path):
    """Its jobs without a set scorer leave the reference unread."""
    real = write_images(tmp_path / "real", 5, 64)
    assert run_sdlab("-m", "scorers=[clip],[clip,fd]", f"reference={real}", "seed=1", "hydra.sweep.dir=s", *MINI) == 0
    rows = pd.read_csv("s/results.csv")
    assert len(rows) == 2 and rows["clip_score"].notna().all()
    assert rows["set_metrics"].fillna("").tolist() == ["", "fd"]
    sets = pd.read_csv("s/summary.csv").dropna(subset=["features"])
    assert set(sets["metric"]) == {"fd"} and (sets["n_reference"] == 5).all()


def test_each_pair_of_swept_values_is_a_slice_and_extractors_never_mix(cache, tmp_path):
    """summary_table on rows made by hand: a slice per value and per pair of values, one per extractor."""
    from sdlab.bench.summary import summary_table

    cache.mkdir(parents=True)
    np.save(cache / "0123456789abcdef.npy", gaussian(60, 8, seed=11).astype(np.float32))
    rows = [{"status": "ok", "seed": seed, "guidance_scale": g, "scheduler": s, "features": f"clip_{clip}",
             "image_features": encode_features(gaussian(1, 8, 0.1 * g, seed=seed)[0]), "set_metrics": "fd kid",
             "reference": "0123456789abcdef"}
            for seed in range(3) for g in (1.0, 7.5) for s in ("ddim", "euler") for clip in ("mini", "other")]
    summary = summary_table(pd.DataFrame(rows), ["guidance_scale", "scheduler"])
    sets = summary[summary["features"].notna()]
    pairs = sets[sets["parameter2"].notna()]
    assert len(pairs) == 4 * 2 * 2 and (pairs["n"] == 3).all()  # 4 pairs x 2 metrics x 2 extractors
    one = sets[(sets["parameter"] == "guidance_scale") & (sets["value"] == "7.5") & sets["parameter2"].isna()]
    assert sorted(one["features"]) == ["clip_mini", "clip_mini", "clip_other", "clip_other"] and (one["n"] == 6).all()
    assert (one["n_reference"] == 60).all() and one["lo"].notna().all()


def test_new_clip_weights_score_again_and_cache_new_reference_features(run_sdlab, cache, tmp_path):
    """CLIP retrained in its folder: each cell is scored again in place and the reference features are computed
    again, not read from the cache the old weights filled."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    clip = tmp_path / "clip"
    shutil.copytree(Path(__file__).resolve().parent.parent / "models" / "mini" / "clip", clip)
    args = ("seeds=[0,1]", "scorers=[clip,fd]", f"clip.path={clip}", "hydra.run.dir=r", *MINI)
    assert run_sdlab(*args) == 0
    first = pd.read_parquet("r/results.parquet")
    assert len(list(cache.glob("*.npy"))) == 1
    tensors = load_file(clip / "model.safetensors")
    tensors["visual_projection.weight"] = tensors["visual_projection.weight"].roll(1, dims=1)
    save_file(tensors, clip / "model.safetensors", metadata={"format": "pt"})
    assert run_sdlab(*args) == 0
    second = pd.read_parquet("r/results.parquet")
    assert len(second) == 2 and not set(second["run_id"]) & set(first["run_id"])
    assert list(second["image_path"]) == list(first["image_path"])  # the same cells, in their place
    assert (second["clip_score"] != first["clip_score"]).all() and second["weights"][0] != first["weights"][0]
    assert (second["image_features"] != first["image_features"]).all()  # the new CLIP's, in this process too
    assert len(list(cache.glob("*.npy"))) == 2 and set(second["reference"]).isdisjoint(first["reference"])
