"""Point errors of predicted world pointmaps against labels, as a torchmetrics ``Metric``."""
from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

THRESHOLDS_M = {"2cm": 0.02, "5cm": 0.05, "10cm": 0.10}


def error_summary(errors_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """``l2_mean``, ``l2_median`` and ``acc_2cm`` / ``acc_5cm`` / ``acc_10cm`` (fraction strictly within the
    threshold, read as metres) of pooled per-pixel L2 errors; NaN for every key when there are none."""
    if errors_N.numel() == 0:
        nan = torch.tensor(float("nan"))
        return {"l2_mean": nan, "l2_median": nan, **{f"acc_{k}": nan for k in THRESHOLDS_M}}
    out = {"l2_mean": errors_N.mean(), "l2_median": errors_N.median()}
    out.update({f"acc_{k}": (errors_N < t).float().mean() for k, t in THRESHOLDS_M.items()})
    return out


class PointErrors(Metric):
    """Per-pixel L2 distance between predicted and label world points over valid pixels.

    Reports ``l2_mean``, ``l2_median`` (in the labels' unit: metres for metric scenes) and ``acc_2cm``,
    ``acc_5cm``, ``acc_10cm`` (fraction of pixels within the threshold, read as metres).
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, pred_B3HW: torch.Tensor, target_B3HW: torch.Tensor, valid_BHW: torch.Tensor) -> None:
        err_BHW = torch.linalg.vector_norm(pred_B3HW.float() - target_B3HW.float(), dim=1)
        self.errors.append(err_BHW[valid_BHW].detach())

    def compute(self) -> dict[str, torch.Tensor]:
        # after a DDP sync the state is one gathered tensor, not a list (whose truth value would be ambiguous)
        empty = isinstance(self.errors, list) and not self.errors
        return error_summary(torch.zeros(0) if empty else dim_zero_cat(self.errors))
