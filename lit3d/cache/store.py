"""On-disk label cache of one (scene, pairs, teacher, alignment) configuration.

Layout of ``<cache_dir>/labels/<scene>-<hash>/``:
    manifest.json         format version, scene, teacher, pairs, alignment, label grid, frames, split, hash
    pairs/shard-NNNNN.npz teacher outputs for a chunk of edges (kept so alignment can be re-run)
    frames/<frame>.npz    per frame: image (H,W,3) uint8, pts_world (H,W,3) float32, conf (H,W), valid (H,W),
                          K (3,3) on the label grid, cam2world (4,4) (NaN if unknown), depth (H,W) metres (0 = none)
    checksums.json        frame name -> SHA-256 of its file
    labels.json           which world frame and unit the points are in, alignment residual
Every file is written atomically; a frame is complete when its checksum is recorded, so an interrupted build
resumes where it stopped, and a file whose checksum does not match is rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from lit3d.data.io import atomic_save_npz, atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAME_KEYS = ("image", "pts_world", "conf", "valid", "K", "cam2world", "depth")


class CacheError(RuntimeError):
    """A cache file that is missing, unreadable or fails its integrity check."""


def manifest_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"label cache file {path} is unreadable: {e}") from None


class LabelCache:
    """Read/write access to one label cache folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- layout -----------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def frame_path(self, name: str) -> Path:
        return self.root / "frames" / f"{name}.npz"

    def shard_path(self, shard: int) -> Path:
        return self.root / "pairs" / f"shard-{shard:05d}.npz"

    # --- manifest -----------------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        if not hasattr(self, "_manifest"):
            if not self.manifest_path.is_file():
                raise CacheError(f"no label cache at {self.root} (missing manifest.json); run python -m lit3d.label")
            m = read_json(self.manifest_path)
            if m.get("format_version") != FORMAT_VERSION or m.get("hash") != manifest_hash(m):
                raise CacheError(f"label cache manifest {self.manifest_path} is corrupt or of another format version")
            self._manifest = m
        return self._manifest

    def init(self, manifest: dict) -> None:
        """Create the folder for ``manifest``, wiping a previous build whose manifest differs."""
        manifest = {**manifest, "format_version": FORMAT_VERSION}
        manifest["hash"] = manifest_hash(manifest)
        if self.manifest_path.is_file():
            try:
                if read_json(self.manifest_path).get("hash") == manifest["hash"]:
                    self._manifest = manifest
                    return
            except CacheError:
                pass
            log.warning("label cache %s was built for another configuration: rebuilding it", self.root)
            for sub in ("pairs", "frames"):
                for f in (self.root / sub).glob("*"):
                    f.unlink()
            for f in ("checksums.json", "labels.json"):
                (self.root / f).unlink(missing_ok=True)
        write_json(self.manifest_path, manifest)
        self._manifest = manifest

    @property
    def frames(self) -> list[str]:
        return self.manifest["frames"]

    @property
    def split(self) -> dict[str, list[str]]:
        return self.manifest["split"]

    @property
    def labels_info(self) -> dict:
        """World frame, unit and residual of the labels (after alignment)."""
        return read_json(self.root / "labels.json")

    # --- frames -------------------------------------------------------------------------------------------
    def checksums(self) -> dict[str, str]:
        path = self.root / "checksums.json"
        return read_json(path) if path.is_file() else {}

    def write_frames(self, frames: dict[str, dict[str, np.ndarray]]) -> None:
        """Write frames atomically, then record their checksums (the commit point of each frame)."""
        sums = self.checksums()
        for name, arrays in frames.items():
            path = self.frame_path(name)
            atomic_save_npz(path, **{k: arrays[k] for k in FRAME_KEYS})
            sums[name] = file_sha256(path)
        write_json(self.root / "checksums.json", sums)

    def verified_frames(self) -> set[str]:
        """Frames whose file exists and matches its recorded checksum; corrupt ones are deleted."""
        ok = set()
        for name, digest in self.checksums().items():
            path = self.frame_path(name)
            if path.is_file() and file_sha256(path) == digest:
                ok.add(name)
            elif path.is_file():
                log.warning("label cache entry %s fails its checksum: it will be rebuilt", path)
                path.unlink()
        return ok

    def is_complete(self) -> bool:
        try:
            return (self.root / "labels.json").is_file() and self.verified_frames() >= set(self.frames)
        except CacheError:
            return False

    def load_frame(self, name: str) -> dict[str, np.ndarray]:
        path = self.frame_path(name)
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in FRAME_KEYS}
        except Exception as e:
            raise CacheError(f"label cache entry {path} is corrupt or missing ({type(e).__name__}: {e}); "
                             "run python -m lit3d.label to rebuild it") from None
        return arrays

    # --- pairwise teacher outputs -------------------------------------------------------------------------
    def done_shards(self) -> set[int]:
        done = set()
        for path in (self.root / "pairs").glob("shard-*.npz"):
            try:
                with np.load(path) as f:
                    f["edges"]  # noqa: B018  (touch: a truncated file raises here)
                done.add(int(path.stem.split("-")[1]))
            except Exception:
                log.warning("teacher shard %s is unreadable: it will be recomputed", path)
                path.unlink()
        return done

    def load_pairs(self, n_shards: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """All teacher outputs, concatenated in shard order: edges (E, 2) and arrays (E, H, W, ...)."""
        parts = []
        for s in range(n_shards):
            try:
                with np.load(self.shard_path(s)) as f:
                    parts.append({k: f[k] for k in f.files})
            except Exception as e:
                raise CacheError(f"teacher shard {self.shard_path(s)} is missing or corrupt ({e})") from None
        edges = np.concatenate([p.pop("edges") for p in parts])
        return edges, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
