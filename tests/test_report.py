"""``python -m lit3d.report``: runs grouped by scene and config keys, mean and std per group."""
import csv
import json

import pytest

from lit3d.fit import fit
from lit3d.report import find_runs, main, report


def _fake_run(path, epochs: int, seed: int, l2: float, fmt: str = "synthetic") -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\ndata:\n  format: {fmt}\n  root: ''\n  seed: 0\n"
                                      f"trainer:\n  max_epochs: {epochs}\n")
    (path / "metrics.json").write_text(json.dumps({"test/l2_mean": l2, "labels/unit": "m"}))


def test_groups_by_scene_and_key_with_mean_and_std(tmp_path):
    _fake_run(tmp_path / "runs" / "a", 5, 0, 1.0)
    _fake_run(tmp_path / "runs" / "b", 5, 1, 3.0)
    _fake_run(tmp_path / "runs" / "c", 20, 0, 0.5)
    _fake_run(tmp_path / "other" / "d", 20, 0, 0.25, fmt="sevenscenes")
    assert len(find_runs([tmp_path])) == 4
    rows, md = report([tmp_path / "runs", tmp_path / "other" / "d"], ["trainer.max_epochs"], out=tmp_path / "out")
    by = {(r["scene"], r["trainer.max_epochs"]): r for r in rows}
    assert by[("synthetic:seed0", "5")]["test/l2_mean"] == pytest.approx(2.0)
    assert by[("synthetic:seed0", "5")]["test/l2_mean std"] == pytest.approx(2**0.5)
    assert by[("synthetic:seed0", "5")]["n_runs"] == 2 and by[("sevenscenes:seed0", "20")]["n_runs"] == 1
    head = next(line for line in md.splitlines() if line.startswith("| scene"))
    assert head == "| scene | trainer.max_epochs=5 | trainer.max_epochs=20 |"  # numeric order of columns
    assert "2 ± 1.4 (n=2)" in md
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "loss_curves.png").is_file()


def test_bad_input_is_one_line_error(tmp_path):
    _fake_run(tmp_path / "r", 5, 0, 1.0)
    assert main([str(tmp_path), "--group-by", "no.such_key", "--out", str(tmp_path / "out")]) == 2
    assert main([str(tmp_path / "empty_or_missing")]) == 2


@pytest.mark.slow
def test_report_of_two_tiny_runs(tiny_cfg, tmp_path, capsys):
    for epochs in (1, 2):
        fit(tiny_cfg(f"trainer.max_epochs={epochs}", f"run_dir={tmp_path / 'runs' / f'e{epochs}'}"))
    assert main([str(tmp_path / "runs"), "--group-by", "trainer.max_epochs", "--out", str(tmp_path / "out")]) == 0
    md = capsys.readouterr().out
    assert "| scene | trainer.max_epochs=1 | trainer.max_epochs=2 |" in md
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trainer.max_epochs"] for r in rows] == ["1", "2"]
    assert all(float(r["test/l2_mean"]) > 0 for r in rows)
