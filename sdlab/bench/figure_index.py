"""The index of a sweep over recipes: figure id -> question -> files with their claims, and one contact sheet."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from sdlab.bench.captions import read_captions
from sdlab.bench.grid import GAP, INK, MARGIN, fitted, font, wrapped
from sdlab.bench.records import job_dirs, read_table, write_table
from sdlab.bench.report import figures_in
from sdlab.bench.resume import CONFIG
from sdlab.io import atomic_save, atomic_write_text, read_json_object
from sdlab.lazy import pandas as pd

SHEET_COLUMNS, THUMB = 5, 300


def recipe_of(job: Path) -> dict:
    """A job's recipe name, `article:` id and question, and a note if its model is not one it is `made_for` (CONFIG)."""
    config = read_json_object(job / CONFIG)  # {} in a folder whose job never started
    article, made_for, model = (config.get(k) if isinstance(config.get(k), dict) else {}
                                for k in ("article", "made_for", "model"))
    rows = read_table(job)
    recipe = rows["experiment"].iloc[0] if rows is not None and "experiment" in rows and len(rows) else None
    stand_in = made_for.get("models") and model.get("name") not in made_for["models"]
    return {"recipe": recipe if isinstance(recipe, str) and recipe else job.name,
            **{k: article.get(k) for k in ("id", "question")},
            "note": f"made for {made_for.get('what')}; run on model={model.get('name')}" if stand_in else ""}


def index_rows(sweep_dir: Path) -> list[dict]:
    """One row per figure of every job folder: id, question, recipe, folder, stand-in note, figure and its claim."""
    rows = []
    for job in job_dirs(sweep_dir):
        recipe, captions = recipe_of(job), read_captions(job)
        for figure in figures_in(job, sweep_dir) or [""]:
            rows.append({"id": recipe.get("id") or "", "question": recipe.get("question") or "",
                         "recipe": recipe["recipe"], "folder": job.name, "note": recipe["note"], "figure": figure,
                         "claim": captions.get(Path(figure).name, "") if figure else "no figure"})
    return rows


def markdown(rows: list[dict], title: str) -> str:
    """The index as a Markdown table, linking each figure."""
    lines = [f"# {title}", "", "| id | question | figure | what it shows |", "|---|---|---|---|"]
    for row in rows:
        link = f"[{Path(row['figure']).name}]({row['figure']})" if row["figure"] else "-"
        shows = (f"**{row['note']}:** " if row["note"] else "") + (row["claim"] or "-")
        cells = [row["id"] or row["recipe"], row["question"], link, shows]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def contact_sheet(rows: list[dict], sweep_dir: Path, target: Path) -> Path | None:
    """Every figure as a thumbnail labelled with its id and file name, SHEET_COLUMNS to a row."""
    shown = [row for row in rows if row["figure"]]
    if not shown:
        return None
    label_height = 3 * (font().size + 3)
    cell_w, cell_h = THUMB, THUMB + label_height
    n_rows = -(-len(shown) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (2 * MARGIN + SHEET_COLUMNS * (cell_w + GAP), 2 * MARGIN + n_rows * (cell_h + GAP)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(shown):
        x, y = MARGIN + (i % SHEET_COLUMNS) * (cell_w + GAP), MARGIN + (i // SHEET_COLUMNS) * (cell_h + GAP)
        name = f"{row['id'] or row['recipe']}: {Path(row['figure']).name}"
        label = wrapped(draw, name, cell_w - 2 * MARGIN, bold=True, most=2)  # apart from the next cell's label
        draw.multiline_text((x, y), label, fill=INK, font=font(True), spacing=2)
        thumb = fitted(sweep_dir / row["figure"], THUMB)
        if thumb is not None:
            sheet.paste(thumb, (x + (cell_w - thumb.width) // 2, y + label_height))
    return atomic_save(sheet, target, format="PNG")


def write_index(sweep_dir: Path) -> str:
    """index.md, index.{parquet,csv} and contact_sheet.png at the root of a sweep over recipes; a log line."""
    sweep_dir = Path(sweep_dir)
    rows = index_rows(sweep_dir)
    if not rows:
        return ""
    write_table(pd.DataFrame(rows), sweep_dir, "index")
    atomic_write_text(sweep_dir / "index.md", markdown(rows, f"Figures of {sweep_dir.name}"))
    contact_sheet(rows, sweep_dir, sweep_dir / "contact_sheet.png")
    figures = sum(1 for row in rows if row["figure"])
    return (f"index of {len({row['folder'] for row in rows})} recipes, {figures} figures: {sweep_dir / 'index.md'}, "
            f"{sweep_dir / 'contact_sheet.png'}")
