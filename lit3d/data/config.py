"""Which scene to load and how (``data.*`` keys)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    format: str = "synthetic"
    """Scene loader: one of ``lit3d.data.FORMATS.names()`` (synthetic, folder, sevenscenes, twelvescenes, images,
    colmap)."""
    root: str = ""
    """Folder of the scene on disk (unused by ``synthetic``, whose renders are cached under ``cache_dir``)."""
    resolution: list[int] = field(default_factory=list)
    """(H, W) the loader delivers frames at (images resized, depth nearest, intrinsics scaled); labels live here.
    Empty: the format's default (``lit3d.data.default_resolution``): 96x128 for the synthetic scene, 192x256 for
    recorded images."""
    stride: int = 1
    """Keep every ``stride``-th frame (after sorting by name; 7-Scenes: over all sequences in order)."""
    max_frames: int = 0
    """Keep the first N frames after striding (0 = all); with an official split (7-Scenes, 12Scenes) this can
    leave a split empty."""
    split: str = "auto"
    """Test split: interleaved (every ``test_every``-th frame), block (the contiguous ``test_block``), frames (the
    names in ``test_frames``), path (synthetic: ``test_path_frames`` frames rendered along a second camera path),
    official (7-Scenes, 12Scenes). auto = official where the format has one, else frames if ``test_frames`` is set,
    else block if ``test_block`` is set, else path for synthetic, else interleaved."""
    test_every: int = 8
    """split=interleaved: hold out every N-th frame for test (0 = no test frames)."""
    test_block: list[str] = field(default_factory=list)
    """split=block: a contiguous held-out block, two frame names [first, last] (inclusive) or two fractions
    [start, end) of the frames kept after ``stride`` / ``max_frames``, e.g. [0.875, 1.0]."""
    test_frames: list[str] = field(default_factory=list)
    """split=frames: explicit test frame names (each must be a frame of the scene)."""
    val_every: int = 8
    """Of the frames that are not test, hold out every N-th for validation (0 = no validation frames)."""
    val_block: list[str] = field(default_factory=list)
    """A contiguous validation block instead of every ``val_every``-th frame (same form as ``test_block``; any
    split mode; must not overlap the test frames). Validation frames held out like the test block make
    ``evaluate tune=true``, sweeps and the validation curves judge new viewpoints, not interpolation."""
    num_frames: int = 200
    """synthetic: number of rendered frames along the (training) camera path."""
    test_path_frames: int = 25
    """synthetic, split=path: test frames rendered along a second camera path (other heights, headings and
    distances, at least 0.25 m from every training camera), named ``test-XXXXXX``."""
    seed: int = 0
    """synthetic: seed of the room layout, textures and camera path."""
    intrinsics: str = ""
    """folder, sevenscenes, images: path of a 3x3 K file (pixels, at the images' native size) that replaces the
    format's default (folder: ``root/camera-intrinsics.txt``; sevenscenes: colour camera f = 525 px; images: from
    ``hfov_deg``)."""
    depth_intrinsics: str = ""
    """folder: path of the depth camera's 3x3 K (pixels, at the depth images' native size) when depth is not
    registered to colour, e.g. raw 7-Scenes (depth f = 585 px, colour f ~ 525 px): depth is re-sampled into the
    colour camera (same centre and pose; the sensors' few-cm baseline is ignored). Empty: depth is registered
    (same K as the colour image)."""
    depth_extrinsics: str = ""
    """folder, sevenscenes: path of a rigid 4x4 (metres) taking the depth camera's coordinates to the colour
    camera's, for sensors a few centimetres apart (raw 7-Scenes: ``experiments/cameras/7scenes_depth_to_color.txt``).
    Depth is then splatted into the colour camera (nearest surface wins). Empty: the two cameras share a centre."""
    pose_camera: str = "color"
    """folder, sevenscenes: which camera the pose files give, ``color`` or ``depth`` (raw 7-Scenes: its poses track
    the depth sensor). ``depth`` needs ``depth_extrinsics``; poses are turned into the colour camera's, which every
    later stage (labels, PnP, metrics) uses."""
    depth_scale: float = 1000.0
    """folder: depth PNG units per metre (1000 = millimetres, as 7-Scenes/12Scenes; TUM RGB-D uses 5000)."""
    hfov_deg: float = 60.0
    """images: horizontal field of view (degrees) that sets the focal length when no ``intrinsics`` file is
    given (principal point at the image centre); 60 deg is between a webcam's and a phone's main camera."""
