"""``vggt`` teacher: every frame's world pointmap from VGGT, chunk by chunk, without pairs or global alignment.

A chunk of ``teacher.chunk_size`` views goes through the network in one pass, which predicts every view's camera,
depth and points in the chunk's first view's frame. Chunks share ``teacher.chunk_overlap`` views, through which
they are brought into the first chunk's frame by Sim(3)s, refined jointly where the chunks form a loop
(``teacher.loop_closure``; :mod:`lit3d.teachers.vggt.stitch`). When the scene has poses the
result is anchored to them (Sim(3) between camera centres): frame ``dataset``, in metres for a metric scene; else
frame ``first_camera`` at VGGT's normalised scale. Frames are prepared as the official ``load_and_preprocess_images``
(crop mode) does: width 518, height scaled and rounded to a multiple of 14, centre-cropped to 518 when taller.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit3d.align.result import AlignResult
from lit3d.teachers import TEACHERS
from lit3d.teachers.base import FrameTransform, Teacher
from lit3d.teachers.config import TeacherConfig
from lit3d.teachers.dust3r.checkpoint import (CHECKPOINT_DIR_ENV, CheckpointError, Checkpoint, load_into, read_pth,
                                              read_safetensors, sha256_file)
from lit3d.teachers.vggt.model import VggtArch, VggtNet, decode_pose, drop_unused
from lit3d.teachers.vggt.stitch import ViewSet, anchor_to_poses, chunk_frames, chunk_ranges, stitch

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
HUB_NAME = "facebook/VGGT-1B"
RELEASE_URL = "https://huggingface.co/facebook/VGGT-1B/resolve/main/model.pt"
DEFAULT_NAME = "VGGT-1B"
"""Default weights: ``VGGT-1B.pt`` or ``VGGT-1B/`` (holding model.safetensors or model.pt) in $LIT3D_CHECKPOINT_DIR."""


@dataclass
class VggtTeacherConfig(TeacherConfig):
    name: str = "vggt"
    checkpoint: str = ""
    """Weights: the released model.pt or model.safetensors, a folder holding one of them, or a hub name (e.g.
    facebook/VGGT-1B, needs network and lit3d[hub]); '' = VGGT-1B.pt or VGGT-1B/ in $LIT3D_CHECKPOINT_DIR
    (default ./checkpoints)."""
    sha256: str = ""
    """Expected SHA-256 of the weights file ('' = accept any; the hash is recorded in the label manifest)."""
    random_init: bool = False
    """Random weights instead of a checkpoint: for tests and benchmarks only (recorded in the manifest)."""
    image_width: int = 518
    """Network input width, pixels (518 as released); the height follows the frame's aspect ratio."""
    chunk_size: int = 32
    """Views per forward pass (device memory grows with it; global attention is quadratic in views x tokens)."""
    chunk_overlap: int = 4
    """Views shared by consecutive chunks, through which each chunk is brought into the first one's frame."""
    loop_closure: bool = False
    """One more chunk joining the first and last views (chunk_size / 2 of each), for trajectories that return to
    their start (orbits, loops): the chunks then form a ring whose Sim(3)s are refined jointly on all shared views,
    spreading the drift of the chain over the loop. Off: a chain of chunks."""
    points: str = "depth"
    """World points from ``depth`` (depth head unprojected through the predicted cameras, the more accurate
    branch per the VGGT authors) or ``point_head`` (the point head's own map)."""
    amp: str = "bf16"
    """Autocast dtype of the aggregator on GPU: bf16, fp16 or none (CPU always runs fp32; the heads run fp32)."""
    device: str = ""
    """Device to move the network to when built (e.g. cuda:0); '' = CUDA when available, else CPU."""
    img_size: int = 0
    """Architecture override (0 / empty = VGGT-1B's; for tests): side of the stored position-embedding grid."""
    embed_dim: int = 0
    """Architecture override: patch embedder and aggregator width, channels."""
    dino_depth: int = 0
    """Architecture override: DINOv2 blocks."""
    dino_num_heads: int = 0
    """Architecture override: DINOv2 attention heads."""
    depth: int = 0
    """Architecture override: aggregator frame/global block pairs."""
    num_heads: int = 0
    """Architecture override: aggregator attention heads."""
    camera_depth: int = 0
    """Architecture override: camera-head trunk blocks."""
    camera_num_heads: int = 0
    """Architecture override: camera-head attention heads."""
    dpt_features: int = 0
    """Architecture override: DPT fusion width, channels."""
    dpt_out_channels: list[int] = field(default_factory=list)
    """Architecture override: DPT widths of the 4 tapped layers, channels."""
    dpt_layers: list[int] = field(default_factory=list)
    """Architecture override: the 4 aggregator block pairs the DPT heads read."""

    def __post_init__(self) -> None:
        from lit3d.config import ConfigError

        try:  # a bad overlap stops the config from loading, before any work
            chunk_ranges(self.chunk_size + 1, self.chunk_size, self.chunk_overlap)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def arch(self) -> VggtArch:
        """VGGT-1B's architecture with the non-default overrides applied."""
        names = ("img_size", "embed_dim", "dino_depth", "dino_num_heads", "depth", "num_heads", "camera_depth",
                 "camera_num_heads", "dpt_features", "dpt_out_channels", "dpt_layers")
        return VggtArch().replace(**{n: tuple(v) if isinstance(v, list) else v
                                     for n in names if (v := getattr(self, n))})


def vggt_frame_transform(height: int, width: int, target: int = 518, patch_size: int = 14) -> FrameTransform:
    """The official crop-mode preprocessing of an (H, W) frame as a transform."""
    new_h = round(height * (target / width) / patch_size) * patch_size
    top = (new_h - target) // 2 if new_h > target else 0
    return BicubicTransform((height, width), (new_h, target), (top, 0, min(new_h, target), target))


@dataclass(frozen=True)
class BicubicTransform(FrameTransform):
    """A :class:`FrameTransform` resampling images bicubically whether shrinking or enlarging (as VGGT's loader)."""

    def image(self, rgb_HW3: np.ndarray) -> np.ndarray:
        if self.resized != self.source:
            rgb_HW3 = np.asarray(Image.fromarray(rgb_HW3).resize(self.resized[::-1], Image.Resampling.BICUBIC))
        return np.ascontiguousarray(self._crop(rgb_HW3))


def missing_weights_message() -> str:
    folder = os.environ.get(CHECKPOINT_DIR_ENV, "checkpoints")
    return (f"VGGT weights not found: download {RELEASE_URL} to {folder}/{DEFAULT_NAME}.pt (or set "
            f"${CHECKPOINT_DIR_ENV}), or set teacher.checkpoint=PATH.pt|PATH.safetensors|FOLDER|{HUB_NAME}; "
            "teacher.random_init=true is for tests and benchmarks only")


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in ("model.safetensors", "model.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} holds neither model.safetensors nor model.pt")


def read_vggt_checkpoint(spec: str, sha256: str = "") -> Checkpoint:
    """The weights ``spec`` names (file, folder, hub name, or '' for the default location), read safely."""
    if spec:
        path = Path(spec).expanduser()
        if not path.exists() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", spec) and path.suffix not in (".pt", ".pth",
                                                                                                     ".safetensors"):
            try:
                from huggingface_hub import hf_hub_download
            except ImportError:
                raise CheckpointError(f"loading hub model {spec!r} needs huggingface_hub: pip install "
                                      "'lit3d[hub]'") from None
            try:
                path = Path(hf_hub_download(spec, "model.safetensors"))
            except Exception as e:  # offline, gated, unknown repo: many exception types
                raise CheckpointError(f"cannot download hub model {spec!r}: {str(e).splitlines()[0]}") from None
        elif not path.exists():
            raise CheckpointError(f"teacher.checkpoint {spec} does not exist; {missing_weights_message()}")
    else:
        folder = Path(os.environ.get(CHECKPOINT_DIR_ENV, "checkpoints"))
        path = next((p for p in (folder / f"{DEFAULT_NAME}.pt", folder / DEFAULT_NAME) if p.exists()), None)
        if path is None:
            raise CheckpointError(missing_weights_message())
    path = _weights_file(path)
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise CheckpointError(f"{path} has SHA-256 {digest}, expected {sha256} (teacher.sha256): a different "
                              "release or a corrupted download")
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_pth(path)
    return Checkpoint(state, path, digest)


class VggtTeacher(Teacher):
    """VGGT on view sets (:meth:`predict_views`), giving world labels chunk by chunk (:meth:`world_labels`)."""

    gives_world_labels = True

    def __init__(self, cfg: VggtTeacherConfig, net: VggtNet, weights: dict):
        super().__init__()
        if cfg.amp not in AMP_DTYPES:
            raise ValueError(f"teacher.amp must be one of {', '.join(AMP_DTYPES)}, got {cfg.amp!r}")
        if cfg.points not in ("depth", "point_head"):
            raise ValueError(f"teacher.points must be depth or point_head, got {cfg.points!r}")
        self.cfg, self._weights = cfg, weights
        self.net = net.eval().requires_grad_(False)

    def frame_transform(self, height: int, width: int) -> FrameTransform:
        return vggt_frame_transform(height, width, self.cfg.image_width, self.net.arch.patch_size)

    def manifest(self) -> dict:
        arch = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.net.arch).items()}
        return {"name": "vggt", "arch": arch, "image_width": self.cfg.image_width, "chunk_size": self.cfg.chunk_size,
                "chunk_overlap": self.cfg.chunk_overlap,
                **({"loop_closure": True} if self.cfg.loop_closure else {}),  # off: earlier caches keep their key
                "points": self.cfg.points, "amp": self.cfg.amp,
                **self._weights}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise TypeError("teacher=vggt predicts view sets (predict_views / world_labels), not image pairs")

    @torch.no_grad()
    def predict_views(self, images_S3HW: Tensor) -> dict[str, Tensor]:
        """One view set (RGB in [0, 1]) in one pass -> in the first view's frame: ``pts_world`` (S, H, W, 3),
        ``conf`` (S, H, W) >= 1, ``cam2world`` (S, 4, 4) and ``K`` (S, 3, 3) in pixels (principal point at the
        image centre, as released). Scale: VGGT's normalised one."""
        device = self.net.aggregator.camera_token.device
        images = images_S3HW.to(device, torch.float32)[None]
        H, W = images.shape[-2:]
        amp = AMP_DTYPES[self.cfg.amp] if device.type == "cuda" else None
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            out = self.net(images)
        world2cam, K = decode_pose(out["pose_enc"][0].double(), H, W)
        cam2world = torch.linalg.inv(world2cam)
        if self.cfg.points == "point_head":
            return {"pts_world": out["world_points"][0], "conf": out["world_points_conf"][0],
                    "cam2world": cam2world.float(), "K": K.float()}
        v, u = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
        depth = out["depth"][0, ..., 0].double()  # (S, H, W)
        rays = torch.stack([(u - K[:, None, None, 0, 2]) / K[:, None, None, 0, 0],
                            (v - K[:, None, None, 1, 2]) / K[:, None, None, 1, 1], torch.ones_like(depth)], -1)
        cam_pts = rays * depth[..., None]
        pts = torch.einsum("sij,shwj->shwi", cam2world[:, :3, :3], cam_pts) + cam2world[:, None, None, :3, 3]
        return {"pts_world": pts.float(), "conf": out["depth_conf"][0], "cam2world": cam2world.float(),
                "K": K.float()}

    def world_labels(self, scene, names: list[str], transform: FrameTransform, min_conf: float) -> AlignResult:
        """World pointmaps of ``names`` on the label grid, chunk by chunk, stitched and (with poses) anchored."""
        index = {name: i for i, name in enumerate(scene.frame_names)}
        ids = np.array(sorted(index[name] for name in names))
        chunks = []
        for frames in chunk_frames(len(ids), self.cfg.chunk_size, self.cfg.chunk_overlap, self.cfg.loop_closure):
            images = np.stack([transform.image(scene.read_image(i)) for i in ids[frames]])
            pred = {k: v.cpu().numpy() for k, v in
                    self.predict_views(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).items()}
            ok = np.isfinite(pred["pts_world"]).all(-1) & np.isfinite(pred["conf"]) & (pred["conf"] >= min_conf)
            chunks.append(ViewSet(frames, pred["pts_world"], pred["conf"], ok,
                                  pred["cam2world"].astype(np.float64)))
        views = stitch(chunks)
        frame, unit, residual = "first_camera", "normalised", 0.0
        if scene.has_poses:
            try:
                views, residual = anchor_to_poses(views, scene.cam2world_N44[ids].astype(np.float64))
                frame, unit = "dataset", "m" if scene.metric else "normalised"
            except ValueError as e:
                log.warning("vggt: labels stay in the first camera's frame: %s", e)
        n, (H, W) = len(scene), transform.output_size
        pts = np.zeros((n, H, W, 3), np.float32)
        conf = np.ones((n, H, W), np.float32)
        valid = np.zeros((n, H, W), bool)
        poses = np.full((n, 4, 4), np.nan)
        pts[ids] = np.where(views.valid_SHW[..., None], views.pts_SHW3, 0.0)
        conf[ids] = np.where(views.valid_SHW, views.conf_SHW, 1.0)
        valid[ids] = views.valid_SHW
        poses[ids] = views.cam2world_S44
        return AlignResult(pts, conf, valid, poses, frame=frame, unit=unit, residual=residual,
                           stats={"chunks": len(chunks), "anchor_rms": residual})


def load_network(cfg: VggtTeacherConfig) -> tuple[VggtNet, dict]:
    arch = cfg.arch()
    if cfg.random_init:
        log.warning("vggt: random weights (teacher.random_init=true): for tests and benchmarks only")
        return VggtNet(arch).init_weights(), {"checkpoint": None, "checkpoint_sha256": None, "random_init": True}
    ckpt = read_vggt_checkpoint(cfg.checkpoint, cfg.sha256)
    with torch.device("meta"):  # the loaded tensors become the parameters: no second copy
        net = VggtNet(arch)
    load_into(net, drop_unused(ckpt.state_dict), str(ckpt.path))
    log.info("vggt: loaded %s (sha256 %s)", ckpt.path, ckpt.sha256)
    return net, {"checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "random_init": False}


@TEACHERS.register("vggt", VggtTeacherConfig)
def build_vggt(cfg: VggtTeacherConfig) -> VggtTeacher:
    """The network with weights (or random ones), on ``cfg.device`` (default: CUDA when available)."""
    teacher = VggtTeacher(cfg, *load_network(cfg))
    return teacher.to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
