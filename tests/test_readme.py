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


def readme_commands(program: str) -> list[list[str]]:
    """The arguments of every `program ...` command in the README's bash blocks (comments, `&& ...` and
    placeholders such as <date>/<time> taken as they are)."""
    import shlex

    readme = (REPO / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```bash")[1:]]
    commands = []
    for line in (line for block in blocks for line in block.splitlines()):
        line = line.split(" #", 1)[0].split("&&", 1)[0].strip()
        if line.startswith(program + " "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_every_vae_train_command_of_the_readme_composes_and_validates():
    """Each recipe is a valid config: every group option, key and value exists and passes the checks
    (a sweep's first value of each comma list; resume_from= commands need a run and are run by tests/test_cli.py)."""
    from conftest import compose_config
    from vae_cli.config import validate

    commands = [c for c in readme_commands("vae-train") if not any(a.startswith("resume_from=") for a in c)]
    assert len(commands) >= 15
    for args in commands:
        overrides = [a.split(",")[0] if "=" in a and not a.startswith("hydra") else a for a in args if not a.startswith("-")]
        overrides = [o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))]
        validate(compose_config(overrides))
