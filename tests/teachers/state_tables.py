"""Full-size parameter tables (``name<TAB>shape<TAB>dtype`` with a header line) as meta-tensor state dicts."""
from pathlib import Path

import torch


def tsv_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a table lists, as empty tensors on the meta device (no memory)."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line]
    return {key: torch.empty([int(n) for n in shape.strip("()").split(",") if n.strip()], device="meta")
            for key, shape, _ in rows}
