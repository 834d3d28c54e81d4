"""Docs are tests: every `sdlab ...` command of README.md and experiments/README.md runs exactly as written.

Each command runs in bash, in an empty working directory, with only HF_HUB_OFFLINE=1 set (and PATH to find
`sdlab`), no added overrides and the default thread count; in a test worker of a split run, one torch thread, as
every test there has (conftest.py): two commands at a time with two spinning threads each on 2 cores took 1.7x the
CPU. It must either finish with exit code 0, every row it wrote `ok` and the files the docs promise on disk, or stop
with exit code 2 and one error line that the docs print verbatim (commands that need weights or files the reader does
not have).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from sdlab.bench.summary import ALL

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "experiments" / "README.md")
# Commands measured at over about 30 s on 2 cores, and recipe commands over about 12 s (each recipe also runs
# on model=tiny in the default suite, tests/test_experiments.py): the default suite stays near 10 minutes.
# `python -m pytest -m slow tests/test_docs.py` runs them as written.
SLOW = {
    "sdlab experiment=compare_schedulers",
    "sdlab -m 'experiment=glob(article_*)'",
    "sdlab -m seed=1,2,3,4 guidance_scale=1,7.5 hydra/launcher=joblib hydra.launcher.n_jobs=2",
    "sdlab -m seed=1,2,3,4 hydra/launcher=submitit_local",
    *(f"sdlab experiment={recipe}" for recipe in (
        "guidance_grid", "trajectory", "article_a6_clip_similarity", "article_a7_trajectory", "article_a8_same_seed",
        "article_a9_params",
        "article_b7_guidance", "article_b8_schedulers", "article_c1_pipeline_by_hand", "article_c2_img2img",
        "article_d1_destruction", "article_d3_guidance", "article_e1_reverse_chain", "article_f1_distance_guidance",
        "article_f2_distance_nfe")),
    "sdlab experiment=trajectory preview=linear",
    "sdlab experiment=compare_schedulers_quick model=sd3_tiny",
}


@dataclass(frozen=True)
class DocCommand:
    """A command as the docs print it, where, and the files they promise it writes."""

    text: str
    source: str
    promised: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    @property
    def bare(self) -> str:
        """The command without its trailing comment."""
        return re.sub(r"\s+#.*$", "", self.text).strip()


def code_block_commands(path: Path) -> list[DocCommand]:
    """`sdlab ...` lines of the fenced bash blocks, backslash continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            if re.match(r"^sdlab(\s|$)", line.strip()):
                commands.append(DocCommand(line.strip(), str(path.relative_to(ROOT))))
    return commands


def table_commands(path: Path) -> list[DocCommand]:
    """`sdlab ...` code spans of table rows, with the row's last column as the promised output files, and the names
    in parentheses after `results` as its promised columns."""
    commands = []
    for row in path.read_text().splitlines():
        if not row.startswith("|"):
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        promised = tuple(re.findall(r"`([\w./]+)`", re.sub(r"\([^)]*\)", "", cells[-1])))
        columns = tuple(re.findall(r"`(\w+)`", "".join(re.findall(r"`results` (\([^)]*\))", cells[-1]))))
        for text in re.findall(r"`(sdlab [^`]+)`", row):
            commands.append(DocCommand(text, str(path.relative_to(ROOT)), promised, columns))
    return commands


def doc_commands() -> list[DocCommand]:
    """Every documented command, once."""
    found = {}
    for path in DOCS:
        for command in [*code_block_commands(path), *table_commands(path)]:
            found.setdefault(command.bare, command)
    return list(found.values())


def documented_text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def written_env(cwd: Path) -> dict[str, str]:
    """What a documented command runs with: PATH, a HOME of its own, offline, and the test worker's thread count."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(cwd / "home"),
            "HF_HUB_OFFLINE": "1", **{k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ}}


def run_as_written(command: DocCommand, cwd: Path) -> subprocess.CompletedProcess:
    env = written_env(cwd)
    return subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=3600)


def written_tables(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/**/results.csv"))


def promised_file_exists(folder: Path, name: str) -> bool:
    """A promised output: the file itself, a table stem with .csv/.parquet, or a folder with a trailing slash."""
    if name.endswith("/"):
        return (folder / name).is_dir()
    return (folder / name).is_file() or (folder / f"{name}.csv").is_file()


def params():
    for command in doc_commands():
        marks = [pytest.mark.slow] if command.bare in SLOW else []
        yield pytest.param(command, id=command.bare, marks=marks)


def test_a_documented_command_has_the_test_workers_one_thread_and_nothing_else_of_its_environment(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("SDLAB_SOMETHING", "x")
    assert sorted(written_env(tmp_path)) == ["HF_HUB_OFFLINE", "HOME", "OMP_NUM_THREADS", "PATH"]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" not in written_env(tmp_path)  # a run in one process: the default thread count


def test_the_docs_have_commands_of_every_kind():
    bare = {c.bare for c in doc_commands()}
    assert "sdlab" in bare
    assert "sdlab -m seed=1,2 guidance_scale=1,7.5 scheduler=ddim,dpmpp_2m" in bare
    assert "sdlab -m 'experiment=glob(article_*)'" in bare
    assert any(c.promised for c in doc_commands())
    a8 = next(c for c in doc_commands() if c.bare == "sdlab experiment=article_a8_same_seed")
    assert "layout_r_same_seed" in a8.columns and "layout_r_same_seed" not in a8.promised
    assert SLOW <= bare, SLOW - bare


@pytest.fixture(scope="module")
def finished(request, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every selected documented command run as written, two at a time (start-up is most of each), each in its own
    empty folder: {bare command: (result, folder)}."""
    from concurrent.futures import ThreadPoolExecutor

    selected = [item.callspec.params["command"] for item in request.session.items
                if item.originalname == "test_documented_command_runs_as_written"]
    folders = {c.bare: tmp_path_factory.mktemp("doc") for c in selected}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda c: run_as_written(c, folders[c.bare]), selected)
        return {c.bare: (result, folders[c.bare]) for c, result in zip(selected, results)}


@pytest.mark.parametrize("command", list(params()))
def test_documented_command_runs_as_written(command: DocCommand, finished):
    result, tmp_path = finished[command.bare]
    if result.returncode == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sdlab: error: "), result.stderr[-3000:]
        assert lines[0] in documented_text(), f"undocumented error for {command.text!r}: {lines[0]}"
        assert not (tmp_path / "outputs").exists()
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "denoising:" not in result.stderr  # the progress bar is for a terminal: a log gets no carriage returns
    if "plan=true" in command.bare.split():  # a plan is printed, nothing is written
        assert "sdlab plan: " in result.stdout and not (tmp_path / "outputs").exists()
        return
    tables = written_tables(tmp_path)
    for table in tables:
        frame = pd.read_csv(table)
        assert len(frame) >= 1, table
        if "status" in frame:
            assert (frame["status"] == "ok").all(), frame.get("error")
    if command.promised:
        [run_dir] = [t.parent for t in tables]
        missing = [name for name in command.promised if not promised_file_exists(run_dir, name)]
        assert not missing, f"{command.text}: promised {missing} not in {sorted(p.name for p in run_dir.iterdir())}"
        absent = set(command.columns) - set(pd.read_csv(run_dir / "results.csv").columns)
        assert not absent, f"{command.text}: promised columns {sorted(absent)} not in its results"
    if re.search(r"(^|\s)-m(\s|$)", command.bare):
        roots = [t.parent for t in tables if t.parent.name.startswith("multirun_")]
        assert len(roots) == 1, tables
        frame = pd.read_csv(roots[0] / "results.csv")
        if frame["image_path"].notna().sum() > 1:
            for name in ("grid.png", "summary.csv", "report.html"):
                assert (roots[0] / name).is_file(), name
            swept = (pd.read_csv(roots[0] / "summary.csv")["parameter"] != ALL).any()  # seeds are no parameter
            assert (roots[0] / "summary.png").is_file() == swept, "summary.png"


def readme_paragraph(start: str, end: str) -> str:
    """The README's text from `start` up to `end`, on one line."""
    text = " ".join((ROOT / "README.md").read_text().split())
    return text[text.index(start):text.index(end, text.index(start))]


def test_the_readme_names_every_file_and_column_a_run_writes(run_sdlab, tmp_path):
    """"Where results go" names each file of a run dir and "Row columns" each column of its table."""
    out = tmp_path / "run"
    assert run_sdlab("seeds=[3,4]", "num_inference_steps=2", "threads=1", f"hydra.run.dir={out}") == 0
    files = readme_paragraph("A single run writes into", "A multirun writes")
    named = set(re.findall(r"`([^`]+)`", files))
    unnamed = [p.name for p in out.iterdir() if p.name not in named
               and not any(n.startswith(f"{p.name}/") for n in named) and not (p.suffix == ".log" and "the log" in files)]
    assert not unnamed, unnamed
    columns = readme_paragraph("Row columns:", "Each seed has its own")
    named = {name for span in re.findall(r"`([^`]+)`", columns) for name in re.split(r",\s*", span)}
    frame = pd.read_csv(out / "results.csv")
    pattern = "`adherence_<attribute>`" in columns
    unnamed = [c for c in frame.columns if c not in named and not (pattern and c.startswith("adherence_"))]
    assert not unnamed, unnamed


def test_experiments_readme_lists_every_recipe():
    """README.md says experiments/README.md lists every recipe: each experiments/*.yaml has a row of its own."""
    rows = (ROOT / "experiments" / "README.md").read_text().splitlines()
    listed = {name for row in rows if row.startswith("| `") for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    commands = {c.bare.split("experiment=")[1] for c in table_commands(ROOT / "experiments" / "README.md")}
    recipes = {p.stem for p in (ROOT / "experiments").glob("*.yaml")}
    assert not recipes - listed - commands, sorted(recipes - listed - commands)
