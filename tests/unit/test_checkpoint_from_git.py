"""scripts/checkpoint_from_git.py: a replaced checkpoint restored from history under a new id, byte for byte."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "checkpoint_from_git.py"
spec = importlib.util.spec_from_file_location("checkpoint_from_git", SCRIPT)
restore_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(restore_script)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _checkpoint(repo: Path, weights: bytes, description: str) -> None:
    folder = repo / "checkpoints" / "shapes-dmd2"
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    card = {"id": "shapes-dmd2", "modality": "image", "role": "student", "description": description, "data": {}}
    (folder / "card.json").write_text(json.dumps(card))
    (folder / "README.md").write_text(f"# shapes-dmd2\n\n{description}\n")


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose shapes-dmd2 was replaced: returns it and the commit of the first version."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    _checkpoint(tmp_path, bytes(range(256)) * 3, "stage 2")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "stage 2")
    first = _git(tmp_path, "rev-parse", "HEAD")
    _checkpoint(tmp_path, b"\x00\xff" * 50, "stage 3")
    _git(tmp_path, "commit", "-qam", "stage 3")
    return tmp_path, first


def test_restores_the_earlier_weights_under_the_new_id_and_keeps_them_out_of_git(repo):
    root, first = repo
    dest = restore_script.restore(first[:7], "shapes-dmd2", "shapes-dmd2-stage2", repo=root)
    assert dest == root / "checkpoints" / "shapes-dmd2-stage2"
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == bytes(range(256)) * 3
    card = json.loads((dest / "card.json").read_text())
    assert card["id"] == "shapes-dmd2-stage2" and card["description"] == "stage 2"
    assert card["data"]["restored_from"] == {"commit": first, "id": "shapes-dmd2"}
    assert (dest / "README.md").read_text().startswith("# shapes-dmd2-stage2\n")
    # the shipped checkpoint is untouched, and the restored one is not something `git add -A` would commit
    shipped = root / "checkpoints" / "shapes-dmd2" / "unet" / "diffusion_pytorch_model.safetensors"
    assert shipped.read_bytes() == b"\x00\xff" * 50
    assert _git(root, "status", "--porcelain") == ""
    # a second restore of the same name refuses and leaves the first intact; the exclude line is written once
    with pytest.raises(SystemExit, match="exists"):
        restore_script.restore(first, "shapes-dmd2", "shapes-dmd2-stage2", repo=root)
    assert (root / ".git" / "info" / "exclude").read_text().count("/checkpoints/shapes-dmd2-stage2/") == 1


@pytest.mark.parametrize(
    ("commit", "model_id", "new_id", "message"),
    [
        ("nosuchcommit", "shapes-dmd2", "x", "rev-parse"),
        ("HEAD", "shapes-teacher", "x", "no checkpoint at checkpoints/shapes-teacher/"),
        ("HEAD", "shapes-dmd2", "shapes-dmd2", "new folder name"),
        ("HEAD", "shapes-dmd2", "a/b", "new folder name"),
    ],
)
def test_bad_requests_are_refused_by_name_and_write_nothing(repo, commit, model_id, new_id, message):
    root, _ = repo
    before = sorted(p.name for p in (root / "checkpoints").iterdir())
    with pytest.raises(SystemExit, match=message):
        restore_script.restore(commit, model_id, new_id, repo=root)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == before
