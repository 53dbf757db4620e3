"""scripts/device_students.sh checks its variant table before anything runs on the GPU machine: no name twice,
every config and `--after` stage exists, and the names a call asks for are variants. A bad table or name exits 2
with the reason and creates nothing (no runs/ folder, no pip install)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_students.sh"


def _workdir(tmp_path: Path, edit=None) -> Path:
    """A folder shaped like the repository root for the script: its configs and scripts, the script maybe edited."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    text = SCRIPT.read_text()
    (tmp_path / "scripts" / "device_students.sh").write_text(edit(text) if edit else text)
    return tmp_path


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/device_students.sh", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _add_variant(line: str):
    return lambda text: text.replace("VARIANTS=(\n", f'VARIANTS=(\n  "{line}"\n', 1)


def test_list_names_every_variant_once(tmp_path) -> None:
    done = _run(_workdir(tmp_path), "list")
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    assert len(names) == len(set(names)) > 10
    assert {"shapes-dmd2", "shapes-dmd2-1step-gan-taps", "shapes-lcm-ema", "shapes-dmd2-from-lcm"} <= set(names)
    assert not (tmp_path / "runs").exists()


def test_a_name_given_twice_is_refused_before_anything_runs(tmp_path) -> None:
    cwd = _workdir(tmp_path, _add_variant("shapes-dmd2-1step-gan-taps=shapes-dmd2"))
    done = _run(cwd, "pipeline", "3", "shapes-dmd2-1step-gan-taps")
    assert done.returncode == 2
    assert "variant names given twice: shapes-dmd2-1step-gan-taps" in done.stderr
    assert not (cwd / "runs").exists()


def test_missing_configs_and_stages_are_named(tmp_path) -> None:
    missing = _run(_workdir(tmp_path / "a", _add_variant("shapes-x=shapes-nope")), "list")
    assert missing.returncode == 2 and "shapes-x names configs/shapes-nope.yaml, which does not exist" in missing.stderr
    orphan = _run(_workdir(tmp_path / "b", _add_variant("shapes-y=shapes-dmd2 --after=shapes-gone")), "list")
    assert orphan.returncode == 2 and "shapes-y waits for shapes-gone, which is not a variant" in orphan.stderr


def test_an_unknown_name_in_a_call_is_refused(tmp_path) -> None:
    cwd = _workdir(tmp_path)
    for command in ("train", "pipeline"):
        done = _run(cwd, command, "3", "shapes-dmd2 shapes-typo")
        assert done.returncode == 2 and "no variant named shapes-typo" in done.stderr
    assert not (cwd / "runs").exists()


def test_a_variant_whose_starting_checkpoint_is_missing_is_refused(tmp_path) -> None:
    """The session-23 GAN stages start from the replaced stage-2 student: without it in the tree the call says how
    to restore it, and creates nothing; with it there the check passes."""
    cwd = _workdir(tmp_path)
    done = _run(cwd, "pipeline", "3", "shapes-dmd2-1step-gan-taps-reg1")
    assert done.returncode == 2 and not (cwd / "runs").exists()
    assert "starts from checkpoints/shapes-dmd2-reg-1step-gan, which is not here" in done.stderr
    assert "scripts/checkpoint_from_git.py" in done.stderr
    # variants asked for alone are checked: one starting from checkpoints it has passes on to the machine's set-up,
    # here a stand-in that stops the script
    (cwd / "scripts" / "device_env.sh").write_text("echo SET-UP REACHED; exit 3\n")
    other = _run(cwd, "pipeline", "3", "shapes-lcm-ema")
    assert other.returncode == 3 and "SET-UP REACHED" in other.stdout
    (cwd / "checkpoints" / "shapes-dmd2-reg-1step-gan").mkdir(parents=True)
    (cwd / "checkpoints" / "shapes-dmd2-reg-1step-gan" / "card.json").write_text("{}")
    passed = _run(cwd, "pipeline", "3", "shapes-dmd2-1step-gan-taps-reg1")
    assert passed.returncode == 3 and "SET-UP REACHED" in passed.stdout, passed.stderr
