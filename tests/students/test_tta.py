"""Test-time augmentation: the copies' warps are the training augmentation's cameras, predictions come back to the
pixels they belong to, and only pixels a copy really shows are averaged."""
import math

import pytest
import torch

from lit3d.cache.augment import Warp, warp_camera
from lit3d.config import load_config
from lit3d.students import create_student
from lit3d.students.tta import TestTimeAugmentation, TestTimeOptions, similarity_warps, warp_matrix


class PerPixelLinear(torch.nn.Module):
    """A 'student' whose world point at a pixel is a linear function of that pixel's colour only."""

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        r, g, b = img_B3HW.unbind(1)
        return torch.stack([2 * r + g, g - b, 3 * b + 1], 1)


def ramp_images(h: int, w: int) -> torch.Tensor:
    """Two images whose colours are affine in the pixel position: bilinear resampling reproduces them exactly."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    img = torch.stack([u / w, v / h, (u + v) / (h + w)])
    return torch.stack([img, img.flip(-1)])


@pytest.mark.parametrize("reduce,original", [("mean", True), ("median", True), ("mean", False), ("median", False)])
@pytest.mark.parametrize("rotations,scales", [((-10.0, 0.0, 10.0), (0.85, 1.0, 1.18)), ((-30.0, 25.0), (0.5, 2.0)),
                                              ((10.0,), (1.0,))])
def test_a_student_that_follows_the_image_content_is_unchanged(rotations, scales, reduce, original):
    """Each copy's prediction, read back where the original pixel went, is that pixel's own prediction: only the
    right inverse warp and sampling back at the forward one give the plain output (to float precision) everywhere,
    border pixels included (copies whose neighbourhood there is padding must be left out), with the unwarped
    image's vote or, scoring the copies alone (``original=False``; one copy in the last case), without it."""
    img = ramp_images(24, 40)
    model = PerPixelLinear()
    out = TestTimeAugmentation(model, rotations, scales, reduce, original)(img)
    assert out.shape == (2, 3, 24, 40)
    torch.testing.assert_close(out, model(img), atol=2e-6, rtol=0)


def test_the_copies_are_the_training_augmentations_rolled_and_zoomed_cameras():
    """For square pixels and the principal point at the image centre, a copy's pixel map is K' R_z K^-1 of
    lit3d.cache.augment (the camera the training views were made with)."""
    h, w, f = 30, 44, 37.0
    K_33 = torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    for angle_deg, scale in [(10.0, 1.0), (-10.0, 0.85), (23.0, 1.4)]:
        angle = math.radians(angle_deg)
        _, _, A_33 = warp_camera(K_33, torch.eye(4, dtype=torch.float64), Warp(angle=angle, scale=scale))
        torch.testing.assert_close(warp_matrix(angle, scale, (h, w)), A_33, atol=1e-12, rtol=0)


class CopyIndex(torch.nn.Module):
    """A 'student' whose points are the index of the copy in the B x (1 + V) forward: 0 for the originals, v + 1
    for copy v (copy v of image b at row v * B + b); B = 2."""

    def forward(self, img):
        n = torch.arange(len(img), dtype=torch.float32) // 2
        return n[:, None, None, None].expand(len(img), 3, *img.shape[-2:]).clone()


def test_only_pixels_a_copy_shows_are_averaged():
    """A copy rolled by 10 deg loses the corners and keeps the centre; a zoom-in loses the border; the average at a
    pixel divides by the copies that see it (here a student that returns each copy's index shows the counts)."""
    h, w = 24, 32
    tta = TestTimeAugmentation(torch.nn.Identity(), (-10.0, 0.0, 10.0), (1.0, 1.3))
    _, _, seen_V1HW = tta.grids((h, w))
    assert [tta.warps[k + 1] for k in range(len(seen_V1HW))] == tta.warps[1:]
    for k, (angle, scale) in enumerate(tta.warps[1:]):
        assert seen_V1HW[k, 0, h // 2, w // 2] == 1
        assert seen_V1HW[k, 0, 0, 0] == 0 and seen_V1HW[k, 0, -1, -1] == 0
        if scale > 1:
            assert seen_V1HW[k, 0, 0, w // 2] == 0 and seen_V1HW[k, 0, h // 2, 0] == 0

    tta.model = CopyIndex()
    out = tta(torch.rand(2, 3, h, w))
    V = len(tta.warps) - 1
    index = torch.arange(1, V + 1, dtype=torch.float32)[:, None, None]
    expected = (index * seen_V1HW[:, 0]).sum(0) / (1 + seen_V1HW[:, 0].sum(0))
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(out[b, c], expected)


@pytest.mark.parametrize("reduce", ["mean", "median"])
def test_without_the_original_a_pixel_takes_the_copies_that_see_it_else_the_original(reduce):
    """``original=False`` (scoring copies alone): where copies see a pixel, their mean / lower median only (the
    original's 0 is no vote); where none does (the corners, outside every roll), the original's points."""
    h, w = 24, 32
    tta = TestTimeAugmentation(CopyIndex(), (-10.0, 10.0), (1.0,), reduce=reduce, original=False)
    _, _, seen_V1HW = tta.grids((h, w))
    out = tta(torch.rand(2, 3, h, w))
    centre = 1.5 if reduce == "mean" else 1.0  # both copies see the centre: 1 and 2, no original's 0
    assert len(seen_V1HW) == 2 and out[0, 0, 0, 0] == 0 and out[1, 1, h // 2, w // 2] == centre
    for v in range(h):
        for u in range(w):
            votes = [k + 1.0 for k in range(2) if seen_V1HW[k, 0, v, u] > 0] or [0.0]
            expected = sum(votes) / len(votes) if reduce == "mean" else votes[(len(votes) - 1) // 2]
            assert abs(out[0, 2, v, u] - expected) < 1e-5 and abs(out[1, 0, v, u] - expected) < 1e-5, (v, u)
    one = TestTimeAugmentation(CopyIndex(), (10.0,), (1.0,), reduce=reduce, original=False)(torch.rand(2, 3, h, w))
    torch.testing.assert_close(one[:, :1], seen_V1HW[1:].expand(2, 1, h, w))  # copy 1 (+10 deg) where seen, else 0


def test_the_median_takes_the_middle_vote_of_the_copies_that_see_a_pixel():
    """Against a per-pixel sort of the votes (the original's 0 and the index of every copy that shows the pixel):
    the lower middle value, so at the centre (all copies) an outlying copy cannot move it, at the border only the
    copies that see the pixel vote."""
    h, w = 24, 32
    tta = TestTimeAugmentation(CopyIndex(), (-10.0, 0.0, 10.0), (1.0, 1.3), reduce="median")
    _, _, seen_V1HW = tta.grids((h, w))
    out = tta(torch.rand(2, 3, h, w))
    for v in range(h):
        for u in range(w):
            votes = sorted([0.0] + [k + 1.0 for k in range(len(seen_V1HW)) if seen_V1HW[k, 0, v, u] > 0])
            expected = votes[(len(votes) - 1) // 2]  # the bilinear read-back of a constant is exact to float eps
            assert abs(out[0, 0, v, u] - expected) < 1e-5 and abs(out[1, 2, v, u] - expected) < 1e-5, (v, u)
    assert abs(out[0, 0, h // 2, w // 2] - (len(tta.warps) - 1) // 2) < 1e-5  # all 1 + V votes at the centre


def test_a_non_finite_prediction_is_not_hidden_by_the_median():
    """A diverged student must stay visible to evaluate's finiteness check: one NaN vote makes the pixel NaN."""
    class NanAtOrigin(torch.nn.Module):
        def forward(self, img):
            out = img.clone()
            out[:, :, 12, 16] = torch.nan  # the image centre in every forward, so the original's vote there
            return out

    out = TestTimeAugmentation(NanAtOrigin(), (-10.0, 10.0), (1.0,), reduce="median")(torch.rand(1, 3, 25, 33))
    assert torch.isnan(out[0, :, 12, 16]).all() and torch.isfinite(out[0, :, 0, 0]).all()


def test_views_options_and_bad_values():
    assert TestTimeOptions().views() == 9 and TestTimeOptions(tta=False).views() == 1
    assert TestTimeOptions(tta_rotations_deg=[0], tta_scales=[1]).views() == 1
    assert similarity_warps([0, 5], [1]) == [(0.0, 1.0), (math.radians(5), 1.0)]  # the identity once, first
    model = PerPixelLinear()
    assert TestTimeOptions(tta=False).wrap(model) is model
    assert isinstance(TestTimeOptions().wrap(model), TestTimeAugmentation)
    for rotations, scales, key in [([], [1.0], "tta_rotations_deg"), ([0.0], [], "tta_scales"),
                                   ([0.0], [0.0], "tta_scales"), ([0.0], [-1.0], "tta_scales"),
                                   ([math.nan], [1.0], "tta_rotations_deg")]:
        with pytest.raises(ValueError, match=f"test-time augmentation: .*{key}"):
            TestTimeOptions(tta_rotations_deg=rotations, tta_scales=scales)  # fails where options are read
    with pytest.raises(ValueError, match="invalid value for 'tta_reduce': 'mode'; valid values: mean, median"):
        TestTimeOptions(tta_reduce="mode")
    assert TestTimeOptions(tta_reduce="median").wrap(model).reduce == "median"
    assert TestTimeOptions(tta_original=False).wrap(model).original is False
    assert TestTimeOptions(tta_original=False).record() == {"tta_reduce": "mean", "tta_original": False,
                                                            "ensemble": "none"}
    assert TestTimeOptions(tta=False, ensemble=["runs/a", "runs/b"]).record() == {
        "tta_reduce": "none", "tta_original": "none", "ensemble": "runs/a,runs/b"}


def test_bad_options_are_one_line_errors_of_the_commands(caplog):
    from lit3d.evaluate import main as evaluate
    from lit3d.localize import main as localize

    for command, argv, message in [(evaluate, ["some_run", "tta_scales=0,1"], "tta_scales must be positive"),
                                   (localize, ["some_run", "a.jpg", "tta_rotations_deg=[]"], "tta_rotations_deg"),
                                   (evaluate, ["some_run", "tta=maybe"], "invalid value for 'tta'"),
                                   (localize, ["some_run", "a.jpg", "tta_reduce=avg"], "valid values: mean, median")]:
        caplog.clear()
        assert command(argv) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]


def test_a_real_student_under_tta_gives_finite_points_of_its_shape():
    cfg = load_config(["student=mobilenetv3"])
    net = create_student(cfg.student, (48, 64)).eval()
    with torch.no_grad():
        out = TestTimeAugmentation(net)(torch.rand(3, 3, 48, 64))
    assert out.shape == (3, 3, 48, 64) and torch.isfinite(out).all()
