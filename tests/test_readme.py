"""The README's quick start is the contract with users and with CI: keep it true."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert match is not None, "no code block under '## Quick start' in README.md"
    block = match.group(1)
    lines = (line.strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert "jaxreg train" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines, f"{test_command!r} is not a line of .ci/run"


def test_ci_runs_every_check():
    ci = (ROOT / ".ci/run").read_text()
    for step in ("python .ci/check_debian_data.py", "\nruff check .\n", "\nmypy\n",
                 "python -m pytest -q --doctest-modules jaxreg/",
                 "python -m sphinx -q -n -W -b html docs", "python -m sphinx -q -W -b doctest docs",
                 "python .ci/browser_test.py",
                 "python -m build", ".ci/wheel_smoke.py", "python notebooks/execute.py"):
        assert step in ci, f"{step!r} is not in .ci/run"
    assert ci.index("python -m pytest -n 2") < ci.index("check_debian_data.py")
