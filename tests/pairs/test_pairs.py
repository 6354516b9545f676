import numpy as np
import pytest

from lit3d.config import load_config
from lit3d.data import Scene
from lit3d.pairs import make_pairs, overlap_matrix


def _scene(n, poses=None):
    return Scene(name="t", frame_names=[f"f{k}" for k in range(n)], image_size=(24, 32),
                 K_N33=np.repeat(np.array([[30.0, 0, 15.5], [0, 30, 11.5], [0, 0, 1]])[None], n, 0),
                 read_image=lambda i: np.zeros((24, 32, 3), np.uint8),
                 split={"train": np.arange(n), "val": [], "test": []}, cam2world_N44=poses)


# pair counts of DUSt3R's make_pairs after symmetrisation (shared/docs/dust3r/contract.md)
@pytest.mark.parametrize("n,graph,count", [
    (8, "complete", 56), (8, "swin-3", 48), (8, "swin-3-noncyclic", 36), (8, "logwin-3", 40), (8, "oneref-0", 14),
    (24, "complete", 552), (24, "swin-3", 144), (24, "logwin-3", 144), (24, "oneref", 46),
])
def test_graph_pair_counts_match_dust3r(n, graph, count):
    edges = make_pairs(_scene(n), load_config([f"pairs.graph={graph}"]).pairs)
    assert len(edges) == count
    assert len({tuple(e) for e in edges}) == count and (edges[:, 0] != edges[:, 1]).all()


def test_cap_on_pairs_per_image():
    edges = make_pairs(_scene(10), load_config(["pairs.graph=complete", "pairs.max_pairs_per_image=2",
                                                "pairs.symmetrize=false"]).pairs)
    counts = np.bincount(edges.ravel(), minlength=10)
    assert counts.max() <= 2 and len(edges) >= 8


def test_covisibility_from_poses():
    # cameras on a line all looking along +z: neighbours overlap, far ones less, a camera turned away not at all
    poses = np.repeat(np.eye(4)[None], 5, 0)
    poses[:, 0, 3] = [0, 0.2, 0.4, 3.0, 0.1]
    poses[4, :3, :3] = np.diag([-1, 1, -1])  # turned around: looks along -z
    scene = _scene(5, poses)
    ov = overlap_matrix(scene, np.arange(5), nominal_depth=2.0)
    assert ov[0, 1] > 0.8 and ov[0, 3] == 0 and ov[0, 4] == 0
    edges = make_pairs(scene, load_config(["pairs.graph=covis", "pairs.min_overlap=0.5", "pairs.symmetrize=false"]).pairs)
    assert {tuple(e) for e in edges} == {(0, 1), (0, 2), (1, 2)}


def test_bad_graph_names():
    star = load_config([]).pairs
    star.graph = "star"  # past the check at load (tests/test_config.py): make_pairs checks on its own
    with pytest.raises(ValueError, match="unknown scene graph 'star'"):
        make_pairs(_scene(4), star)
    with pytest.raises(ValueError, match="needs known camera poses"):
        make_pairs(_scene(4), load_config(["pairs.graph=covis"]).pairs)
