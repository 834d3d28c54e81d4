"""The README contract: CI runs the README's test command exactly."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [block.split("```")[0].strip() for block in blocks]


def test_ci_runs_the_readme_test_command_exactly():
    run_command, test_command = readme_commands()
    assert run_command.endswith("&& sdlab")
    assert "pytest" in test_command
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_the_readmes_nfe_note_names_every_sampler_that_makes_more_than_one_call_a_step():
    """`nfe` in the row columns: the samplers named there are those sdlab counts other than one call a step, each with
    its count (`calls` = a x steps + b: 2N-1 for (2, -1), N+1 for (1, 1))."""
    import re

    from sdlab.models.schedulers import SCHEDULERS

    text = " ".join((ROOT / "README.md").read_text().split())
    note = text[text.index("`num_inference_steps, nfe` ("):text.index("`guidance_scale, seed")]
    named = {name for name in SCHEDULERS if re.search(rf"\b{name}\b", note)}
    assert named == {name for name, spec in SCHEDULERS.items() if spec.calls != (1, 0)}, note
    formula = {(2, -1): "2N-1", (1, 1): "N+1"}
    assert all(formula[SCHEDULERS[name].calls] in note for name in named)
