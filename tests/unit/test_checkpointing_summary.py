"""scripts/checkpointing_summary.py: peak memory and steady images/s without and with gradient checkpointing."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "checkpointing_summary.py"
spec = importlib.util.spec_from_file_location("checkpointing_summary", SCRIPT)
summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summary)


def _run(folder: Path, gc: str, memory: list[int], rates: list[float]) -> None:
    (folder / f"mem-{gc}.txt").write_text("".join(f"{m}\n" for m in memory))
    lines = [
        "Loading weights",
        *(f"step {20 * (i + 1)}/60 loss/dmd 0.5 lr 3.00e-05 {r} img/s eta 0.1 min" for i, r in enumerate(rates)),
    ]
    (folder / f"train-{gc}.log").write_text("\n".join([*lines, "eval at step 60: overall 0.1"]) + "\n")


def test_peaks_and_steady_rates_skip_the_start_up_window(tmp_path):
    (tmp_path / "device.txt").write_text("NVIDIA H100 80GB HBM3\n")
    _run(tmp_path, "false", [0, 30000, 51191, 50000], [61.0, 212.0, 224.0])
    _run(tmp_path, "true", [0, 13687, 12000], [96.0, 172.0, 171.0])
    result = summary.main([str(tmp_path)])
    assert result["peak_used_mib"] == {"off": 51191, "on": 13687}
    assert result["images_per_s"] == {"off": 218.0, "on": 171.5}
    assert result["memory_ratio"] == pytest.approx(13687 / 51191)
    assert json.loads((tmp_path / "checkpointing.json").read_text()) == result
    table = (tmp_path / "checkpointing.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in table and "| on | 13687 | 172 |" in table and "0.27×" in table


def test_missing_samples_or_windows_are_named(tmp_path):
    _run(tmp_path, "false", [], [61.0, 212.0])
    _run(tmp_path, "true", [100], [96.0, 172.0])
    with pytest.raises(SystemExit, match="mem-false.txt: no memory samples"):
        summary.main([str(tmp_path)])
    _run(tmp_path, "false", [100], [61.0])
    with pytest.raises(SystemExit, match="train-false.log: need at least two logged windows, found 1"):
        summary.main([str(tmp_path)])
