"""Figures and the plotly point-cloud view: files written atomically, valid PNG/HTML, expected content."""
import base64
import json
import re
import matplotlib
import numpy as np
import pytest

from lit3d.geometry import invert_pose, look_at, project, transform_points
from lit3d.viz.figures import error_cdf, loss_curves, pointmap_panels, points_to_rgb
from lit3d.viz.pointcloud import frustum_lines, pointcloud_html, subsample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


def plotly_traces(html: str) -> list[dict]:
    """The data list passed to Plotly.newPlot in a plotly HTML file."""
    start = html.index("Plotly.newPlot(")
    start = html.index("[", start)
    return json.JSONDecoder().raw_decode(html[start:])[0]


def values(v) -> np.ndarray:
    """A plotly JSON array: a list, or a base64 typed array {'dtype', 'bdata'} (plotly >= 6)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.array([np.nan if x is None else x for x in v], dtype=object if v and isinstance(v[0], str) else float)


def no_tmp_left(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_pointmap_panels(tmp_path):
    import matplotlib.pyplot as plt

    figs_before = plt.get_fignums()
    rng = np.random.default_rng(0)
    n, h, w = 2, 24, 32
    teacher = rng.normal(0, 1, (n, h, w, 3))
    student = teacher + rng.normal(0, 0.02, teacher.shape)
    valid = rng.random((n, h, w)) > 0.1
    student[0, 0, 0] = np.nan  # non-finite predictions are shown as invalid, not propagated
    images = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    out = pointmap_panels(tmp_path / "sub" / "panels.png", images, teacher, student, valid, titles=["a", "b"])
    assert out == tmp_path / "sub" / "panels.png"
    read_png(out)
    assert no_tmp_left(out.parent)
    assert plt.get_fignums() == figs_before  # no pyplot state leaked


def test_points_to_rgb_shared_mapping():
    pts = np.array([[[[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]]]])
    mask = np.array([[[True, False]]])
    rgb = points_to_rgb(pts, mask, np.zeros(3), np.array([2.0, 2.0, 2.0]))
    np.testing.assert_allclose(rgb[0, 0, 0], [0, 0, 0])
    np.testing.assert_allclose(rgb[0, 0, 1], [0.5, 0.5, 0.5])  # masked -> grey


def test_loss_curves_and_error_cdf(tmp_path):
    steps = np.arange(1, 101)
    curves = {
        "run-a": {"train": (steps, 1.0 / steps), "val": (steps[::10], 1.5 / steps[::10])},
        "run-b": {"train": (steps, np.r_[0.0, np.nan, 2.0 / steps[2:]])},  # non-positive/NaN dropped on log y
    }
    read_png(loss_curves(tmp_path / "loss.png", curves))
    errors = {"student": np.r_[np.linspace(0, 12, 50), np.inf], "teacher": np.linspace(0, 4, 20), "empty": []}
    read_png(error_cdf(tmp_path / "cdf.png", errors, xlabel="translation error (cm)"))
    assert no_tmp_left(tmp_path)


def test_subsample_deterministic():
    a, b = subsample(1000, 100), subsample(1000, 100)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 100 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(subsample(50, 100), np.arange(50))


def test_frustum_lines_geometry():
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    cam2world = look_at(np.array([1.0, 2.0, 0.5]), np.zeros(3))
    lines = frustum_lines(cam2world, K, (24, 32), depth=0.3)
    pts = lines[np.all(np.isfinite(lines), 1)]
    apex = pts[np.all(np.isclose(pts, cam2world[:3, 3]), 1)]
    assert len(apex) == 4  # one ray from the camera centre to each corner
    corners = pts[~np.all(np.isclose(pts, cam2world[:3, 3]), 1)]
    uv, z = project(transform_points(invert_pose(cam2world), corners), K)
    np.testing.assert_allclose(z, 0.3)
    expected = {(-0.5, -0.5), (31.5, -0.5), (31.5, 23.5), (-0.5, 23.5)}
    assert {tuple(np.round(p, 6)) for p in uv} == expected


def test_pointcloud_html(tmp_path):
    rng = np.random.default_rng(0)
    teacher = rng.normal(0, 1, (500, 3))
    student = teacher + 0.01
    student[:10] = np.nan
    clouds = {"teacher": (teacher, rng.integers(0, 255, (500, 3), dtype=np.uint8)), "student": (student, None)}
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    cams = {"true cameras": [(look_at(np.array([3.0, 0, 0]), np.zeros(3)), K, (24, 32))],
            "estimated cameras": [(look_at(np.array([3.0, 0.1, 0]), np.zeros(3)), K, (24, 32))] * 2}
    out = pointcloud_html(tmp_path / "cloud.html", clouds, cams, max_points=200)
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    # plotly.js embedded (works offline): no external script, and the library itself is in the file
    assert not re.search(r"<script[^>]*\bsrc=", html) and len(html) > 1_000_000
    traces = {t["name"]: t for t in plotly_traces(html)}
    assert list(traces) == ["teacher", "student", "true cameras", "estimated cameras"]
    assert [t["mode"] for t in traces.values()] == ["markers", "markers", "lines", "lines"]
    assert len(values(traces["teacher"]["x"])) == 200 and len(values(traces["student"]["x"])) == 200  # subsampled
    assert np.all(np.isfinite(values(traces["student"]["x"])))  # NaN points dropped before subsampling
    assert len(traces["teacher"]["marker"]["color"]) == 200
    true_x, est_x = values(traces["true cameras"]["x"]), values(traces["estimated cameras"]["x"])
    assert len(est_x) == 2 * len(true_x) and np.isnan(true_x).sum() == 5  # 4 rays + 1 rectangle per frustum
    assert no_tmp_left(tmp_path)


def test_pointcloud_html_without_cameras(tmp_path):
    pts = np.random.default_rng(0).normal(0, 1, (20, 3))
    html = pointcloud_html(tmp_path / "c.html", {"only": (pts, pts * 0 + 0.5)}, None).read_text()
    traces = plotly_traces(html)
    assert [t["name"] for t in traces] == ["only"] and traces[0]["marker"]["color"][0] == "rgb(128,128,128)"


def test_views_of_a_folder_share_one_plotly_js(tmp_path):
    pts = np.random.default_rng(0).normal(0, 1, (20, 3))
    sizes = [pointcloud_html(tmp_path / f"{k}.html", {"only": (pts, None)}, shared_js=True).stat().st_size
             for k in range(2)]
    js = tmp_path / "plotly.min.js"
    assert js.stat().st_size > 1_000_000 and max(sizes) < 100_000
    assert '<script charset="utf-8" src="plotly.min.js">' in (tmp_path / "1.html").read_text()
    assert no_tmp_left(tmp_path)
