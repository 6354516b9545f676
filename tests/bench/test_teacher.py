"""``lit3d bench teacher`` on tiny random teachers: one row per teacher at the same frames and size, sane numbers
(not timings)."""
import json

import pytest

from lit3d.bench.__main__ import main
from lit3d.bench.teacher import format_table, measure, parse_args
from testkit import one_line_error

PAIR_TINY = "enc_embed_dim=32,enc_depth=1,enc_num_heads=2,dec_embed_dim=32,dec_depth=4,dec_num_heads=2"
DUST3R_TINY = f"dust3r:{PAIR_TINY},dpt_feature_dim=16,dpt_last_dim=8,dpt_layer_dims=[8,8,16,16]"
MAST3R_TINY = f"mast3r:{PAIR_TINY},dpt_feature_dim=16,dpt_last_dim=8,dpt_layer_dims=[8,8,16,16]"
VGGT_TINY = ("vggt:img_size=56,embed_dim=32,dino_depth=2,dino_num_heads=2,depth=4,num_heads=2,camera_depth=1,"
             "camera_num_heads=2,dpt_features=16,dpt_out_channels=[8,16,32,32],dpt_layers=[0,1,2,3],"
             "chunk_size=3,chunk_overlap=1,loop_closure=true")


def test_one_row_per_teacher_at_the_same_workload(tmp_path):
    out = tmp_path / "bench.json"
    rows = measure(parse_args(["--teachers", DUST3R_TINY, MAST3R_TINY, VGGT_TINY, "frames=5", "size=112x112",
                               "--device", "cpu", "--align", "iterations=5", f"json={out}"]))
    assert [r.teacher for r in rows] == ["DUSt3R_ViTLarge_BaseDecoder_512_dpt",
                                         "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", "vggt"]
    assert all(r.frames == 5 and r.hw == (112, 112) and r.device == "cpu" and r.dtype == "fp32" for r in rows)
    # swin-3 over 5 views (cyclic) is every pair, both directions; 5 views in chunks of 3 sharing 1, and the loop
    assert [(r.passes, r.pass_unit) for r in rows] == [(20, "pair"), (20, "pair"), (3, "chunk")]
    for r in rows:
        assert 0 < r.params < 10**7 and r.pass_seconds > 0 and r.join_seconds > 0 and r.peak_mb > 100
        assert r.seconds_per_frame == pytest.approx((r.pass_seconds + r.join_seconds) / 5)
    assert rows[1].params > rows[0].params  # MASt3R = DUSt3R + a descriptor head
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["teacher", "params", "M"] and len(lines) == 2 + len(rows)
    assert lines[4].split()[7:9] == ["3", "chunks"]
    table = json.loads(out.read_text())
    assert (table["frames"], table["size"]) == (5, [112, 112]) and len(table["rows"]) == 3
    assert table["rows"][2]["seconds_per_frame"] == pytest.approx(rows[2].seconds_per_frame)


@pytest.mark.parametrize("argv, message", [
    (["size=100x112"], "argument --size: sides must be positive multiples of 112"),
    (["--teachers", "vggt:chunk_size=x"], "teacher.chunk_size"),
    (["--teachers", "vggt:chunk_size=4,chunk_overlap=4"], "teacher.chunk_overlap must be in [1, chunk_size - 1]"),
])
def test_bad_workloads_are_one_line(caplog, argv, message):
    assert message in one_line_error(caplog, main, ["teacher", "--device", "cpu", *argv])
