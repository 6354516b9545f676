"""``lit3d bench data``: preloaded and lazily read frames side by side, without and with workers, vs the step."""
import pytest

from lit3d.bench.__main__ import main

TINY = ["data.num_frames=16", "data.resolution=[24,32]", "loader.resolution=[24,32]", "loader.batch_size=4",
        "trainer.enable_progress_bar=false", "student=vit", "student.depth=1", "student.latent_dim=32",
        "student.num_heads=2", "student.patch_size=8"]


@pytest.mark.slow  # 4-11 s: labels, a student, worker processes
def test_reports_both_loader_modes_with_and_without_workers(tmp_path, capsys):
    assert main(["data", "--seconds", "0.05", *TINY, "loader.num_workers=1",
                 f"cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = {line[:44].strip(): line[44:].split() for line in out.splitlines() if "DataLoader" in line or "step" in line}
    for mode in ("preloaded", "lazy"):
        for workers in (0, 1):
            ms, per_s, ratio = (float(v) for v in rows[f"DataLoader {mode}, {workers} workers"])
            assert abs(ms * per_s / 1000 - 1) < 0.01 and ratio > 0  # ms/item and items/s agree
    assert float(rows["student vit train step"][2]) == 1.0


@pytest.mark.parametrize("seconds", ["soon", "0"])
def test_bad_seconds_is_one_line(seconds, caplog):
    assert main(["data", "--seconds", seconds]) == 2
    assert "--seconds needs a positive number of seconds" in caplog.text
