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
