"""Feature retrieval: cell-centre labels, the most similar training cell's distance, and the notebook helper on a
tiny trained run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit3d.metrics.retrieval import cell_points, retrieval_distances


@pytest.mark.parametrize("stride", [8, 4, 3])
def test_cell_points_are_the_labels_at_each_cell_centre(stride):
    rng = np.random.default_rng(0)
    H, W = 4 * stride + 1, 3 * stride + 2  # a partial last row / column of cells is left out
    pts, valid = rng.normal(size=(H, W, 3)), rng.random((H, W)) > 0.1
    got, ok = cell_points(pts, valid, stride)
    assert got.shape == (4, 3, 3) and ok.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            # the pixels whose centres (k + 0.5) lie nearest the cell centre (i + 0.5) * stride
            c_r, c_c = (i + 0.5) * stride - 0.5, (j + 0.5) * stride - 0.5
            rows = [r for r in range(H) if abs(r - c_r) <= 0.5]
            cols = [c for c in range(W) if abs(c - c_c) <= 0.5]
            block = [(r, c) for r in rows for c in cols]
            np.testing.assert_allclose(got[i, j], np.mean([pts[r, c] for r, c in block], axis=0))
            assert ok[i, j] == all(valid[r, c] for r, c in block)


def test_retrieval_finds_the_cell_with_the_most_similar_features():
    g = torch.Generator().manual_seed(0)
    keys, key_pts = torch.randn(50, 16, generator=g), torch.randn(50, 3, generator=g, dtype=torch.float64)
    pick = torch.randint(0, 50, (37,), generator=g)
    # a query is a scaled, slightly perturbed copy of one key's features (cosine ignores the scale)
    queries = 3.0 * keys[pick] + 0.01 * torch.randn(37, 16, generator=g)
    query_pts = torch.randn(37, 3, generator=g, dtype=torch.float64)
    retrieved, nearest, index = retrieval_distances(queries, query_pts, keys, key_pts, chunk=8)
    assert torch.equal(index, pick)
    for n in range(37):
        assert retrieved[n].item() == pytest.approx(float(np.linalg.norm(query_pts[n] - key_pts[pick[n]])))
        assert nearest[n].item() == pytest.approx(min(float(np.linalg.norm(query_pts[n] - p)) for p in key_pts))
    assert (nearest <= retrieved + 1e-12).all()
    with pytest.raises(ValueError, match="at least one labelled training cell"):
        retrieval_distances(queries, query_pts, keys[:0], key_pts[:0])


@pytest.mark.slow
def test_feature_retrieval_of_a_tiny_scr_run(tiny_cfg):
    from lit3d import analysis
    from lit3d.fit import fit

    cfg = tiny_cfg("student=scr", "student.encoder=conv", "student.pretrained=false", "student.head_width=16",
                   "student.output=cells", "data.resolution=[32,32]", "loader.resolution=[32,32]")
    fit(cfg)
    run = analysis.load_run(cfg.run_dir)

    # a training cell's own features are the most similar: it finds itself
    train = analysis.feature_retrieval(run, "train")
    assert len(train) > 0 and (train["retrieved"] == 0).all() and (train["nearest"] == 0).all()

    test = analysis.feature_retrieval(run, "test")
    names = run.cache.split["test"]
    assert set(test["frame"]) <= set(names) and (test["nearest"] <= test["retrieved"] + 1e-9).all()
    frames = analysis.predict_split(run, "test", tta=False)  # the student's points, computed independently
    for _, cell in test.iterrows():
        k, (r, c) = names.index(cell["frame"]), (8 * cell["row"] + 3, 8 * cell["col"] + 3)
        assert frames.valid_NHW[k, r:r + 2, c:c + 2].all()
        label = frames.teacher_NHW3[k, r:r + 2, c:c + 2].reshape(4, 3).mean(0)
        pred = frames.student_NHW3[k, r:r + 2, c:c + 2].reshape(4, 3).mean(0)
        assert cell["predicted"] == pytest.approx(np.linalg.norm(pred - label), rel=1e-4, abs=1e-6)
    labelled = sum(frames.valid_NHW[k, 8 * i + 3:8 * i + 5, 8 * j + 3:8 * j + 5].all()
                   for k in range(len(names)) for i in range(4) for j in range(4))
    assert len(test) == labelled
    assert len(analysis.feature_retrieval(run, "test", n_frames=1)["frame"].unique()) == 1


def test_feature_retrieval_needs_an_encoder():
    from lit3d import analysis

    class NoEncoder:
        module = type("M", (), {"student": torch.nn.Identity()})()

    with pytest.raises(ValueError, match="pass encoder="):
        analysis.feature_retrieval(NoEncoder(), "test")
