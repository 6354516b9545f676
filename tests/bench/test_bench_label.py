"""``lit3d bench label`` on tiny scenes: arguments, the table, and one size per fresh process."""
import json

import pytest

from lit3d.bench import BENCHMARKS
from lit3d.bench.__main__ import main as bench_main
from lit3d.bench.label import COLUMNS, DEFAULTS, _label, _render, format_table, parse_args

TINY = ["data.resolution=[24,32]", "data.test_path_frames=2"]


def test_arguments_and_errors():
    assert BENCHMARKS["label"] == "lit3d.bench.label"
    assert parse_args([]) == ([500, 1000, 5000], "", [])
    assert parse_args(["frames=8,16", "json=out.json", "pairs.graph=swin-2"]) == ([8, 16], "out.json",
                                                                                   ["pairs.graph=swin-2"])
    for bad, message in (("frames=8,x", "numbers"), ("frames=1", "at least 2"), ("data.num_frames=9", "frames="),
                         ("cache_dir=/tmp/x", "set by the benchmark")):
        with pytest.raises(ValueError, match=message):
            parse_args([bad])


def test_a_bad_option_is_one_line(capsys, caplog):
    assert bench_main(["label", "frames=0"]) == 2
    assert bench_main(["label", "frames=4", "pairs.grahp=swin-2"]) == 2  # checked before any process starts
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("\n" not in e for e in errors) and "grahp" in errors[1]


def test_render_and_label_steps_report_their_figures(tmp_path):
    args = [*DEFAULTS, *TINY, "data.num_frames=6", f"cache_dir={tmp_path}"]
    render = _render(args)
    assert render["render_s"] > 0 and render["render_peak_MB"] > 0
    row = _label(args)
    assert row["labelled"] == 8 and row["pairs"] == 8 * 3 * 2  # swin-3, both directions
    assert row["peak_rss_MB"] >= render["render_peak_MB"] * 0.5 and row["s_per_frame"] == pytest.approx(
        row["seconds"] / 8)
    row = _label([*args, "align.method=global", "align.iterations=10"])  # the method is a plain override
    assert row["labelled"] == 8 and row["peak_rss_MB"] > 0


def test_table_layout():
    rows = [{"frames": 500, "labelled": 525, "pairs": 3150, "seconds": 50.0, "s_per_frame": 0.095, "teacher_s": 30.0,
             "peak_rss_MB": 1000.0, "ratio": 1.0, "render_s": 9.0, "render_peak_MB": 900.0},
            {"frames": 5000, "error": "MemoryError: "}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert lines[1].split() == ["500", "525", "3150", "50.0", "0.095", "30.0", "1000.0", "1.000", "9.0", "900.0"]
    assert lines[2].split() == ["5000", "MemoryError:"]


@pytest.mark.slow
def test_each_size_in_fresh_processes_and_json(tmp_path, capsys):
    out = tmp_path / "label.json"
    assert bench_main(["label", "frames=6,12", *TINY, f"json={out}"]) == 0
    table = json.loads(out.read_text())
    rows = table["rows"]
    assert [r["frames"] for r in rows] == [6, 12] and [r["labelled"] for r in rows] == [8, 14]
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["peak_rss_MB"] / rows[0]["peak_rss_MB"])
    assert all(r["peak_rss_MB"] > 0 and r["seconds"] > 0 for r in rows)
    assert "peak_rss_MB" in capsys.readouterr().out
