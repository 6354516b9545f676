"""Binary little-endian PLY point clouds: float32 x, y, z (the points' own frame and unit) and uchar RGB."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lit3d.files import atomic_output

log = logging.getLogger(__name__)

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}


def _to_uint8(rgb_N3: np.ndarray) -> np.ndarray:
    """uint8 colours as given, or floats in [0, 1] scaled to 0..255."""
    if rgb_N3.dtype == np.uint8:
        return rgb_N3
    return np.clip(np.nan_to_num(rgb_N3.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def write_ply(path: str | os.PathLike, pts_N3: np.ndarray, rgb_N3: np.ndarray | None = None) -> Path:
    """Write points (..., 3) and optional colours (..., 3) (uint8, or float in [0, 1]) as a binary PLY.

    Non-finite points are dropped with their colours; pointmaps (H, W, 3) are flattened row-major. Written
    atomically; returns the path.
    """
    pts = np.asarray(pts_N3).reshape(-1, 3)
    keep = np.all(np.isfinite(pts), axis=1)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb_N3 is not None:
        rgb = np.asarray(rgb_N3).reshape(-1, 3)
        if len(rgb) != len(pts):
            raise ValueError(f"write_ply: {len(pts)} points but {len(rgb)} colours")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(int(keep.sum()), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertices[axis] = pts[keep, i]
    if rgb_N3 is not None:
        rgb_u8 = _to_uint8(rgb[keep])
        for i, ch in enumerate(("red", "green", "blue")):
            vertices[ch] = rgb_u8[:, i]
    header = ["ply", "format binary_little_endian 1.0", "comment written by lit3d", f"element vertex {len(vertices)}"]
    header += [f"property {'float' if t == '<f4' else 'uchar'} {name}" for name, t in fields]
    header += ["end_header"]

    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())
    log.info("wrote %s (%d points, %d non-finite dropped)", path, len(vertices), len(pts) - len(vertices))
    return path


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N, 3) float32, colours (N, 3) uint8 or None) of a binary little-endian PLY's vertex element.

    Reads any scalar vertex properties (faces and other elements after the vertices are ignored).
    """
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        n, props, fmt, in_vertex = None, [], None, False
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] == "comment":
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    n = int(words[2])
                elif n is None:
                    raise ValueError(f"{path}: elements before 'vertex' are not supported")
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unsupported vertex property {' '.join(words[1:])!r}")
                props.append((words[2], _PLY_TYPES[words[1]]))
        if fmt != "binary_little_endian" or n is None:
            raise ValueError(f"{path}: only binary_little_endian PLY with a vertex element is supported (got {fmt})")
        data = np.frombuffer(f.read(n * np.dtype(props).itemsize), dtype=props, count=n)
    pts_N3 = np.stack([data[a] for a in "xyz"], axis=1).astype(np.float32)
    names = set(data.dtype.names)
    rgb_N3 = None
    if {"red", "green", "blue"} <= names:
        rgb_N3 = np.stack([data[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
    return pts_N3, rgb_N3
