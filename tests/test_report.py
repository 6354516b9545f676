"""``python -m lit3d.report``: runs grouped by scene and config keys, mean and std per group."""
import csv
import json
import logging

import pytest

from lit3d.fit import fit
from lit3d.report import ReportOptions, find_runs, main, report, scene_of
from testkit import one_line_error


def _fake_run(path, epochs: int, seed: int, l2: float, fmt: str = "synthetic") -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\ndata:\n  format: {fmt}\n  root: ''\n  seed: 0\n"
                                      f"trainer:\n  max_epochs: {epochs}\n")
    (path / "metrics.json").write_text(json.dumps({"test/l2_mean": l2, "labels/unit": "m"}))


def test_a_scene_is_its_folder_or_the_synthetic_seed():
    # the synthetic scene renders itself from data.seed: a data.root left in its config must not name it
    assert scene_of({"data.format": "synthetic", "data.root": "data/kitchen", "data.seed": 3}) == "synthetic:seed3"
    assert scene_of({"data.format": "folder", "data.root": "data/kitchen/", "data.seed": 3}) == "folder:kitchen"


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


def test_options_are_typed_key_values(tmp_path, capsys):
    from lit3d.cli import parse_options
    from lit3d.report import USAGE

    paths, opt, rest = parse_options(["a", "b", "group_by=trainer.max_epochs,seed", "metrics=[test/l2_mean]",
                                      "out=x"], ReportOptions, "runs", USAGE, many=True)
    assert paths == ["a", "b"] and rest == []
    assert opt == ReportOptions(group_by=["trainer.max_epochs", "seed"], metrics=["test/l2_mean"], out="x")
    assert main(["--help"]) == 0 and "group_by=[]  # Config keys to group by" in capsys.readouterr().out


def test_bad_input_is_one_line_error(tmp_path, caplog):
    _fake_run(tmp_path / "r", 5, 0, 1.0)
    out = f"out={tmp_path / 'out'}"
    assert "group_by key 'trainer.max_epoch': no run has it; close names: trainer.max_epochs" in one_line_error(
        caplog, main, [str(tmp_path), "group_by=trainer.max_epoch", out])
    # a mistyped metric printed a table of dashes
    assert "metric 'test/l2_maen': no run has it; close names: test/l2_mean" in one_line_error(
        caplog, main, [str(tmp_path), "metrics=test/l2_maen", out])
    assert "option 'group-by': unknown; close names: group_by" in one_line_error(
        caplog, main, [str(tmp_path), "group-by=seed"])
    assert "--group-by: options are key=value" in one_line_error(caplog, main, [str(tmp_path), "--group-by", "seed"])
    assert "is not a directory" in one_line_error(caplog, main, [str(tmp_path / "empty_or_missing")])


def test_a_corrupt_run_is_skipped_by_name_and_nan_runs_are_counted(tmp_path, caplog):
    _fake_run(tmp_path / "a", 5, 0, 1.0)
    _fake_run(tmp_path / "b", 5, 1, 3.0)
    _fake_run(tmp_path / "c", 5, 2, float("nan"))  # a diverged seed: json.dumps writes NaN
    _fake_run(tmp_path / "d", 5, 3, 2.0)
    (tmp_path / "d" / "metrics.json").write_text('{"test/l2_mean": 2.0, "labels/un')  # killed while written
    with caplog.at_level(logging.WARNING):
        rows, md = report([tmp_path], ["trainer.max_epochs"], out=tmp_path / "out")
    assert any(f"{tmp_path / 'd' / 'metrics.json'} is unreadable" in r.getMessage() for r in caplog.records)
    (row,) = rows
    assert row["n_runs"] == 3 and row["test/l2_mean"] == pytest.approx(2.0)  # the mean of the finite values
    assert (row["test/l2_mean n"], row["test/l2_mean nan"]) == (2, 1)
    assert "| 2 ± 1.4 (n=2, 1 NaN) |" in md
    text = (tmp_path / "out" / "report.md").read_text()
    assert "runs with NaN or infinite values are left out of both and counted" in text
    assert f"Skipped: {tmp_path / 'd' / 'metrics.json'} is unreadable" in text


@pytest.mark.slow
def test_report_of_two_tiny_runs(tiny_cfg, tmp_path, capsys):
    for epochs in (1, 2):
        fit(tiny_cfg(f"trainer.max_epochs={epochs}", f"run_dir={tmp_path / 'runs' / f'e{epochs}'}"))
    assert main([str(tmp_path / "runs"), "group_by=trainer.max_epochs", f"out={tmp_path / 'out'}"]) == 0
    md = capsys.readouterr().out
    assert "| scene | trainer.max_epochs=1 | trainer.max_epochs=2 |" in md
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trainer.max_epochs"] for r in rows] == ["1", "2"]
    assert all(float(r["test/l2_mean"]) > 0 for r in rows)
