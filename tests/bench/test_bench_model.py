"""``lit3d bench model`` on tiny settings: the table's structure, not its timings."""
import json
from types import SimpleNamespace

import pytest
import torch

from lit3d.bench.model import Row, format_table, parse_student, run, time_forward

TINY_TEACHER = ["enc_embed_dim=32", "enc_depth=1", "enc_num_heads=2", "dec_embed_dim=32", "dec_depth=4",
                "dec_num_heads=2", "dpt_feature_dim=16", "dpt_last_dim=8", "dpt_layer_dims=[8,8,16,16]"]
STUDENTS = ["vanilla_cnn:channels=[4,4,8,8,8,8],head_hidden=8", "vit:depth=1,latent_dim=16,num_heads=2,patch_size=8"]


def test_student_spec_keeps_list_values():
    cfg = parse_student("vanilla_cnn:channels=[4,4,8,8,8,8],head_hidden=8")
    assert cfg.student.name == "vanilla_cnn" and cfg.student.channels == [4, 4, 8, 8, 8, 8]
    assert cfg.student.head_hidden == 8


def test_table_layout():
    rows = [Row("student a", "image", "cpu", "fp32", 2, 1000, 0.1, 1.0, 2.0, 2000.0, 0.9, 0.5, 100.0, 200.0),
            Row("teacher b", "pair", "cpu", "fp32", 1, 10**8, 400.0, 20.0, 30.0, 20.0, 60.0, 100.0)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["model", "per", "device", "dtype", "batch", "params", "M", "MB", "p50", "ms", "p95",
                                "ms", "items/s", "cpu", "ms/item", "GMAC/item", "teacher/student", "MAC", "ratio"]
    assert len(lines) == 4 and lines[2].split()[-2:] == ["100.0", "200.0"] and lines[3].split()[-2:] == ["nan", "nan"]


@pytest.mark.slow
def test_bench_model_tiny(tmp_path, capsys):
    rows, rates = run(["--students", *STUDENTS, "--resolution", "32", "32", "--batch-size", "2", "--device", "cpu",
                       "--iters", "2", "--warmup", "1", "--teacher-iters", "1", "--teacher", *TINY_TEACHER,
                       "--data", "data.num_frames=8", "data.split=interleaved", "data.resolution=[24,32]",
                       "loader.resolution=[24,32]", "loader.batch_size=4", f"cache_dir={tmp_path}",
                       "--data-seconds", "0.1", "--runtimes", "eager"])
    assert [r.name.split()[0] for r in rows] == ["student", "student", "teacher"]
    assert [r.unit for r in rows] == ["image", "image", "pair"] and rows[0].batch == 2
    for r in rows:
        assert r.params > 0 and r.size_mb > 0 and 0 < r.p50_ms <= r.p95_ms and r.items_per_s > 0 and r.cpu_ms > 0
    for r in rows[:2]:  # the ratio is the teacher's seconds per pair over the student's seconds per image
        assert r.ratio == pytest.approx(r.items_per_s / rows[2].items_per_s)
        assert r.mac_ratio == pytest.approx(rows[2].gmac / r.gmac)
    assert [name.split()[0] for name, _ in rates] == ["DataLoader", "train", "train"]
    assert all(ips > 0 for _, ips in rates)


def test_multiply_accumulates_are_counted_per_item():
    """A 1x1 conv of 4 -> 8 channels over 5x6 pixels is 4 * 8 * 30 MACs per image, whatever the batch."""
    conv = torch.nn.Conv2d(4, 8, 1, bias=False)
    x = torch.rand(3, 4, 5, 6)
    *_, gmac = time_forward(lambda: conv(x), n_items=3, iters=2, warmup=1, max_seconds=1.0, cuda=False)
    assert gmac * 1e9 == pytest.approx(4 * 8 * 30)


def test_runtimes_side_by_side_and_json(tmp_path):
    """Eager, TorchScript and ONNX Runtime rows of one student, the same MACs, and the table as JSON."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    rows, rates = run(["--students", STUDENTS[0], "--resolution", "32", "32", "--device", "cpu", "--iters", "2",
                       "--no-teacher", "--no-data", f"json={out}"])
    assert [r.name for r in rows] == [f"student {STUDENTS[0]} [{rt}]" for rt in ("eager", "torchscript", "onnxruntime")]
    assert rates == [] and all(r.p50_ms > 0 for r in rows) and len({r.gmac for r in rows}) == 1
    table = json.loads(out.read_text())
    assert [m["name"] for m in table["models"]] == [r.name for r in rows] and table["localize"] == []
    assert table["models"][0]["p50_ms"] == rows[0].p50_ms


class _Plane(torch.nn.Module):
    """An exportable stand-in student: the same tilted plane of world points for every image (a valid PnP input)."""

    def __init__(self, hw=(24, 32)):
        super().__init__()
        v, u = torch.meshgrid(torch.arange(hw[0], dtype=torch.float32), torch.arange(hw[1], dtype=torch.float32),
                              indexing="ij")
        z = 2 + 0.3 * u / hw[1] + 0.2 * v / hw[0]
        self.register_buffer("pts_3HW", torch.stack([(u - hw[1] / 2) / 30 * z, (v - hw[0] / 2) / 30 * z, z]))
        self.hparams = SimpleNamespace(img_size=hw, student={"name": "plane"})

    def forward(self, img_B3HW):
        return self.pts_3HW[None] + 0 * img_B3HW  # batch-sized by broadcasting, so tracing keeps it dynamic


def test_bench_localize_times_one_forward_and_test_time_augmentation(tmp_path):
    """``--localize`` measures both ways of predicting, side by side in one run."""
    from PIL import Image

    from lit3d.bench.model import bench_localize
    from lit3d.export import export_torchscript, student_metadata

    net = _Plane()
    export_torchscript(net, torch.rand(2, 3, 24, 32), tmp_path / "plane.ts",
                       metadata=student_metadata(net, {"frame": "dataset", "unit": "m"}))
    for k in range(3):
        Image.fromarray((torch.rand(48, 64, 3) * 255).byte().numpy()).save(tmp_path / f"q{k}.png")
    rows = bench_localize(str(tmp_path / "plane.ts"), [str(tmp_path)], "", 60.0)
    assert [r["tta_views"] for r in rows] == [1, 9] and all(r["images"] == 3 for r in rows)
    assert all(r["p50_ms"] > 0 and r["runtime"] == "torchscript" for r in rows)
