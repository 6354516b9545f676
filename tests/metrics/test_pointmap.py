"""PointErrors: per-pixel L2 errors of valid pixels, also after a DDP-style state sync."""
import torch

from lit3d.metrics.pointmap import PointErrors


def _two_rank_gather(tensor, group=None):
    """What torchmetrics' all-gather returns on two ranks that hold the same state."""
    return [tensor, tensor]


def test_errors_are_norms_of_valid_pixels_and_survive_a_sync():
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # error 5
    target[0, 0, 1, 1] = 1.0  # error 1, but invalid
    valid = torch.tensor([[[True, True], [True, False]]])
    metric = PointErrors()
    metric.update(pred, target, valid)
    local = metric.compute()
    assert torch.isclose(local["l2_mean"], torch.tensor(5 / 3))
    # DDP: the list state becomes one gathered tensor; compute must not test its truth value
    metric.sync(dist_sync_fn=_two_rank_gather, distributed_available=lambda: True)
    synced = metric.compute()
    assert torch.isclose(synced["l2_mean"], torch.tensor(5 / 3))
    metric.unsync()
