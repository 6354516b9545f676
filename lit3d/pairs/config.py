"""Which image pairs the teacher sees (``pairs.*`` keys)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairsConfig:
    graph: str = "swin-3"
    """Scene graph: ``swin-K`` (each frame with its K successors, ``-noncyclic`` to drop wrap-around),
    ``logwin-K``, ``complete``, ``oneref-R`` or ``covis`` (frusta overlap from known poses)."""
    min_overlap: float = 0.3
    """covis: smallest fraction of frame i's pixels that must be visible in frame j."""
    max_pairs_per_image: int = 0
    """Cap on the pairs each frame takes part in, keeping the most overlapping ones (0 = no cap)."""
    symmetrize: bool = True
    """Also predict (j, i) for every (i, j), as DUSt3R does by default."""
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    """Which splits' frames are labelled (test labels are what students are measured against)."""
