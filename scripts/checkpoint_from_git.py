"""Restore a checkpoint as an earlier commit held it, under a new id, so a device run can start from it.

    python scripts/checkpoint_from_git.py be7131b shapes-dmd2 --as shapes-dmd2-reg-1step-gan

Why: a shipped checkpoint is replaced under the id users know (`shapes-dmd2`), and the variants that fine-tune its
predecessor need that predecessor's weights again to stay the experiment they were. Git has them; no device has
git. This writes `checkpoints/<new id>/` with the card's id rewritten (the registry skips a second card of one id)
and `data.restored_from` naming the commit, and adds the folder to `.git/info/exclude`: the 25 MB of weights are
already in history, and a device call must name the folder in its carry list to take it along."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.image_task import write_model_card  # noqa: E402


def _git(repo: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.decode().strip()}")
    return done.stdout


def restore(commit: str, model_id: str, new_id: str, repo: Path = ROOT) -> Path:
    """Write `checkpoints/<new_id>` from `checkpoints/<model_id>` at `commit`; refuse to overwrite anything."""
    if new_id == model_id or "/" in new_id or not new_id:
        raise SystemExit(f"--as must be a new folder name, got {new_id!r}")
    dest = repo / "checkpoints" / new_id
    if dest.exists():
        raise SystemExit(f"{dest} exists; remove it first")
    sha = _git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
    prefix = f"checkpoints/{model_id}/"
    files = [f for f in _git(repo, "ls-tree", "-r", "--name-only", sha, "--", prefix).decode().splitlines() if f]
    if not any(f == prefix + "card.json" for f in files):
        raise SystemExit(f"commit {sha[:12]} has no checkpoint at {prefix} (no card.json there)")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name in files:
            target = staging / name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_git(repo, "show", f"{sha}:{name}"))
        card = json.loads((staging / "card.json").read_text())
        card["id"] = new_id
        card.setdefault("data", {})["restored_from"] = {"commit": sha, "id": model_id}
        (staging / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        write_model_card(staging)
        staging.rename(dest)  # whole or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if (repo / ".git").is_dir():  # a worktree's .git is a file: nothing to add there
        exclude = repo / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        line = f"/checkpoints/{new_id}/"
        if line not in (exclude.read_text().splitlines() if exclude.exists() else []):
            with exclude.open("a") as f:
                f.write(line + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the commit whose checkpoint to restore")
    parser.add_argument("model_id", help="the checkpoint's folder under checkpoints/ at that commit")
    parser.add_argument("--as", dest="new_id", required=True, help="the new id and folder name")
    args = parser.parse_args(argv)
    dest = restore(args.commit, args.model_id, args.new_id)
    print(f'wrote {dest} (ignored by git here; carry it to a device: "checkpoints/{args.new_id}")')


if __name__ == "__main__":
    main()
