"""Figures and the plotly point-cloud view: files written atomically, valid PNG/HTML, expected content."""
import base64
import json
import re
import matplotlib
import numpy as np
import pytest

from lit3d.geometry import invert_pose, look_at, project, transform_points
from lit3d.viz.figures import (error_cdf, floor_axes, generalisation_map, loss_curves, pointmap_panels,
                                points_to_rgb)
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


def _horizontal_cameras(rng, n, up_3=(0.0, 0.0, 1.0), height=1.5, slope=0.0):
    """Upright cameras looking level, at random places of a ramp rising by ``slope`` along its long axis."""
    up_3 = np.asarray(up_3, float) / np.linalg.norm(up_3)
    a = np.cross(up_3, [1.0, 0.0, 0.0] if abs(up_3[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up_3, a)
    out = []
    for _ in range(n):
        along = 3 * rng.normal()
        eye = along * a + rng.normal() * b + (height + slope * along) * up_3
        yaw = rng.uniform(0, 2 * np.pi)
        out.append(look_at(eye, eye + np.cos(yaw) * a + np.sin(yaw) * b, up_3))
    return np.stack(out)


def test_floor_axes_see_the_cameras_from_above():
    rng = np.random.default_rng(0)
    for up in ((0, 0, 1), (0, -1, 0), (0.3, 0.2, 0.9)):  # z up, OpenCV-style world (y down), a tilted world
        up = np.asarray(up) / np.linalg.norm(up)
        T = _horizontal_cameras(rng, 30, up, slope=0.4)  # up a ramp: its plane is not the floor
        A = floor_axes(T)
        assert np.allclose(A @ A.T, np.eye(2), atol=1e-9)
        assert np.allclose(A @ up, 0, atol=1e-9)
        # seen from above, horizontal distances are kept; the first axis is the centres' long (3x) one
        c = T[:, :3, 3]
        flat = c - (c @ up)[:, None] * up
        d_true = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
        d_map = np.linalg.norm((c @ A.T)[:, None] - (c @ A.T)[None], axis=-1)
        assert np.allclose(d_map, d_true, atol=1e-9)
        assert np.std(c @ A[0]) > 2 * np.std(c @ A[1])
        # the right-handed order: x, y of the map and up make a rotation, so the map is not mirrored
        assert np.isclose(np.linalg.det(np.stack([A[0], A[1], up])), 1.0)

    # cameras rolled every way have no common up: the plane through their centres is what is seen from above
    n = np.array([1.0, 2.0, 2.0]) / 3
    a = np.cross(n, [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    T = np.stack([np.eye(4)] * 40)
    for k in range(40):
        Q, R = np.linalg.qr(rng.normal(size=(3, 3)))
        Q = Q * np.sign(np.diag(R))  # a uniformly random rotation (or reflection, fixed next)
        T[k, :3, :3] = Q * np.linalg.det(Q)
        T[k, :3, 3] = rng.normal() * a + rng.normal() * b + 0.5 * n
    assert np.linalg.norm(T[:, :3, 1].mean(0)) < 0.5
    assert np.allclose(floor_axes(T) @ n, 0, atol=1e-9)
    # nothing to go by (two centres, no common up), no finite pose, or NaN rows: world x and y / finite ones only
    two = np.stack([np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0])])  # upside down to each other
    two[1, :3, 3] = 1.0
    assert np.allclose(floor_axes(two), np.eye(3)[:2])
    assert np.allclose(floor_axes(np.full((3, 4, 4), np.nan)), np.eye(3)[:2])
    upright = _horizontal_cameras(rng, 10)
    assert np.allclose(floor_axes(np.concatenate([upright, np.full((2, 4, 4), np.nan)])), floor_axes(upright))


def test_generalisation_map(tmp_path):
    rng = np.random.default_rng(1)
    train, test = _horizontal_cameras(rng, 50), _horizontal_cameras(rng, 6)
    est = test.copy()
    est[:, :3, 3] += rng.normal(scale=0.05, size=(6, 3))
    est[2] = np.nan  # a failed frame
    t_cm = 100 * np.linalg.norm(est[:, :3, 3] - test[:, :3, 3], axis=1)
    t_cm[2] = np.inf
    out = generalisation_map(tmp_path / "gen.png", train, test, est, t_cm, rng.uniform(0.1, 1, 6),
                             rng.uniform(0, 1, 6))
    assert out == tmp_path / "gen.png" and read_png(out).shape[1] > read_png(out).shape[0]  # two panels
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
