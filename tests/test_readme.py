"""The README opens with the two quick-start commands, and CI runs exactly those."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_start_commands_open_the_readme_and_ci_runs_them():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first_block[0].startswith("pip install -e . && vae-train")
    assert first_block[1].startswith('pip install -e ".[test]" && pytest')
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert 'pip install -e ".[test]"   # README: pip install -e ".[test]" && pytest' in ci
    assert ci[-1] == "pytest"
    assert "pip install -q torch==2.13.0" in ci
