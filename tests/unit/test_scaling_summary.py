"""scripts/scaling_summary.py: steady-state samples/s from two runs' metrics, and the scaling between them."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "scaling_summary.py"
spec = importlib.util.spec_from_file_location("scaling_summary", SCRIPT)
scaling_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling_summary)


def _metrics(path: Path, rates: list[float]) -> Path:
    rows = [{"step": 25 * (i + 1), "images_per_s": r} for i, r in enumerate(rates)] + [{"step": 99, "eval/overall": 0.0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_scaling_skips_the_start_up_window_and_writes_json_and_markdown(tmp_path):
    one = _metrics(tmp_path / "one.jsonl", [90.0, 350.0, 360.0])  # the first window holds start-up
    two = _metrics(tmp_path / "two.jsonl", [300.0, 700.0, 660.0])
    scaling_summary.main([str(tmp_path / "scaling"), str(one), str(two), "2"])
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert result["samples_per_s_1_gpu"] == 355.0 and result["samples_per_s_2_gpus"] == 680.0
    assert result["scaling"] == pytest.approx(680 / 355)
    assert "1.92×" in (tmp_path / "scaling.md").read_text()


def test_a_run_with_one_window_is_refused(tmp_path):
    one = _metrics(tmp_path / "one.jsonl", [90.0])
    with pytest.raises(SystemExit, match="at least two logged windows"):
        scaling_summary.main([str(tmp_path / "s"), str(one), str(one)])
