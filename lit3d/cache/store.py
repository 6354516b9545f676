"""On-disk label cache of one (scene, pairs, teacher, alignment) configuration.

Layout of ``<cache_dir>/labels/<scene>-<hash>/``:
    manifest.json         format version, scene, teacher, pairs, alignment, label grid, frames, split, hash
    pairs/shard-NNNNN.npz teacher outputs for a chunk of edges (kept so alignment can be re-run)
    frames/<frame>.npz    per frame: image (H,W,3) uint8, pts_world (H,W,3) float32, conf (H,W), valid (H,W),
                          K (3,3) on the label grid, cam2world (4,4) (NaN if unknown), depth (H,W) metres (0 = none)
    checksums.json        frame name -> SHA-256, size (bytes) and mtime_ns of its file as written
    labels.json           which world frame and unit the points are in, alignment residual, cameras.npz's SHA-256
    cameras.npz           the frames' cameras as alignment used or solved them (:meth:`LabelCache.write_cameras`)
    inputs.json           frame name -> stamp (paths, sizes, mtime_ns) and SHA-256 of its input files when labelled
    .lock                 held by the process that checks or builds the cache (see :mod:`lit3d.locks`)
Every file is written atomically; a frame is complete when its checksum is recorded, so an interrupted build
resumes where it stopped, and a file whose checksum does not match is rebuilt, never used. Integrity checks scale:
the full SHA-256 is computed when a frame is written and with ``label --verify``; every other start compares
sizes and modification times only (a file whose size or time differs is hashed again), and every read of a frame
checks the zip CRC-32 of its arrays, so a flipped byte that kept both is caught when the frame is decoded.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lit3d.files import atomic_save_npz, atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAME_KEYS = ("image", "pts_world", "conf", "valid", "K", "cam2world", "depth")
CAMERAS_FILE = "cameras.npz"


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
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"label cache file {path} is unreadable ({e}); run python -m lit3d.label with the same "
                         "keys to rebuild it") from None
    if not isinstance(obj, dict):
        raise CacheError(f"label cache file {path} is corrupt (not a JSON object); run python -m lit3d.label with "
                         "the same keys to rebuild it")
    return obj


def _stamp(path: Path, sha256: str) -> dict:
    """What ``checksums.json`` records of a frame file: its SHA-256 and the size and mtime_ns it has now."""
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
        """Create the folder for ``manifest``, wiping a previous build whose manifest differs.

        A corrupt manifest is rewritten: the folder's name carries the configuration's hash, so its teacher shards
        (checked against the scene graph before reuse) are kept and only the frames are made again from them.
        """
        manifest = {**manifest, "format_version": FORMAT_VERSION}
        manifest["hash"] = manifest_hash(manifest)
        if self.manifest_path.is_file():
            try:
                stored = read_json(self.manifest_path)
                corrupt = stored.get("hash") != manifest_hash(stored)
            except CacheError:
                corrupt = True
            if not corrupt and stored["hash"] == manifest["hash"]:
                self._manifest = manifest
                return
            if corrupt:
                log.warning("label cache manifest %s is corrupt: rewriting it and rebuilding the frames from the "
                            "stored teacher outputs", self.manifest_path)
            else:
                log.warning("label cache %s was built for another configuration: rebuilding it", self.root)
            for sub in ("frames",) if corrupt else ("pairs", "frames"):
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

    def labels_ok(self) -> bool:
        """Whether ``labels.json`` (the commit point of a build) exists and reads back; a corrupt one is deleted,
        so that the next build aligns again and rewrites it."""
        path = self.root / "labels.json"
        if not path.is_file():
            return False
        try:
            info = read_json(path)
            if {"frame", "unit", "residual"} <= set(info):
                return True
        except CacheError:
            pass
        log.warning("label cache file %s is corrupt: the labels will be aligned and written again", path)
        path.unlink()
        return False

    def input_stamps(self) -> dict[str, dict] | None:
        """Frame name -> ``{"stat", "sha256"}`` of its input files as last labelled (:meth:`lit3d.data.Scene.
        frame_stamps`, :meth:`~lit3d.data.Scene.frame_digest`); None when not recorded (a new cache, or one written
        before stamps were recorded), empty when unreadable. Records of older caches (a stamp only) get an empty
        ``sha256``."""
        path = self.root / "inputs.json"
        if not path.is_file():
            return None
        try:
            recorded = read_json(path)
            return {name: {"stat": rec, "sha256": ""} if isinstance(rec, str) else
                    {"stat": str(rec["stat"]), "sha256": str(rec["sha256"])} for name, rec in recorded.items()}
        except CacheError as e:
            problem = str(e).split(";")[0]
        except (KeyError, TypeError):
            problem = f"label cache file {path} is corrupt (not a record of input stamps)"
        log.warning("%s: every frame counts as changed", problem)
        return {}

    def record_input_stamps(self, stamps: dict[str, dict]) -> None:
        write_json(self.root / "inputs.json", stamps)

    # --- frames -------------------------------------------------------------------------------------------
    def checksums(self) -> dict[str, dict]:
        """Frame name -> ``{"sha256", "size", "mtime_ns"}`` of its file as written (entries of caches written
        before sizes and times were recorded hold the digest only). A corrupt file counts as empty: every frame is
        then rebuilt."""
        path = self.root / "checksums.json"
        if not path.is_file():
            return {}
        try:
            sums = read_json(path)
        except CacheError as e:
            log.warning("%s: its frames will be rebuilt", str(e).split(";")[0])
            return {}
        return {name: rec if isinstance(rec, dict) else {"sha256": rec} for name, rec in sums.items()}

    def write_frames(self, frames: dict[str, dict[str, np.ndarray]]) -> None:
        """Write frames atomically, then record their checksums (the commit point of each frame)."""
        sums = self.checksums()
        for name, arrays in frames.items():
            path = self.frame_path(name)
            buf = io.BytesIO()
            np.savez(buf, **{k: arrays[k] for k in FRAME_KEYS})  # hashed in memory: no second read of the file
            atomic_write_bytes(path, buf.getvalue())
            sums[name] = _stamp(path, hashlib.sha256(buf.getbuffer()).hexdigest())
        write_json(self.root / "checksums.json", sums)

    def verified_frames(self, full: bool = False) -> set[str]:
        """Frames whose file matches its record; a file that fails its SHA-256 is deleted (it will be rebuilt).

        By default only size and mtime_ns are compared (one ``stat`` per frame); a file whose size or time
        differs (a copied cache, or an edit) is hashed, and kept with its new time when its digest matches.
        ``full`` hashes every file.
        """
        sums, ok, restamped = self.checksums(), set(), {}
        for name, rec in sums.items():
            path = self.frame_path(name)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not full and (rec.get("size"), rec.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
                ok.add(name)
            elif file_sha256(path) == rec.get("sha256"):
                ok.add(name)
                if (rec.get("size"), rec.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
                    restamped[name] = _stamp(path, rec["sha256"])
            else:
                log.warning("label cache entry %s fails its checksum: it will be rebuilt", path)
                path.unlink()
        if restamped:
            write_json(self.root / "checksums.json", {**sums, **restamped})
        return ok

    def is_complete(self, full: bool = False) -> bool:
        """Whether ``labels.json`` and every frame pass their checks (``full``: SHA-256 of every frame)."""
        try:
            return self.labels_ok() and self.verified_frames(full) >= set(self.frames)
        except CacheError:
            return False

    def load_frame(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of one frame. Reading checks each array's zip CRC-32; a file that fails it is deleted, so
        that the next ``label`` (or ``fit``) run rebuilds it, and the error says so."""
        path = self.frame_path(name)
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in FRAME_KEYS}
        except Exception as e:
            if path.is_file() and not isinstance(e, OSError):
                path.unlink(missing_ok=True)
                what = "is corrupt and was removed"
            else:
                what = "is missing or unreadable"
            raise CacheError(f"label cache entry {path} {what} ({type(e).__name__}: {e}); run python -m lit3d.label "
                             "with the same keys to rebuild it") from None
        return arrays

    # --- cameras ------------------------------------------------------------------------------------------
    def write_cameras(self, names: list[str], cam2world_N44: np.ndarray, K_N33: np.ndarray, size: tuple[int, int],
                      frame: str, unit: str, component_N: np.ndarray | None = None) -> str:
        """Store the frames' cameras as alignment used or solved them, atomically; returns the file's SHA-256
        (the build records it in labels.json). Poses: camera-to-world in ``frame`` and ``unit`` (NaN: unposed);
        K: pixels of the label grid of ``size`` (H, W); ``component_N``: per frame, -1 = in no edge."""
        path = self.root / CAMERAS_FILE
        component = np.zeros(len(names), int) if component_N is None else np.asarray(component_N, int)
        atomic_save_npz(path, names=np.array(names, dtype=str), cam2world=np.asarray(cam2world_N44, np.float64),
                        K=np.asarray(K_N33, np.float64), size=np.array(size, int), frame=np.array(frame),
                        unit=np.array(unit), component=component, manifest_hash=np.array(self.manifest["hash"]))
        return file_sha256(path)

    def cameras(self) -> dict[str, np.ndarray] | None:
        """The stored cameras (keys as :meth:`write_cameras` names them), None for a cache built before caches kept
        them; a file that fails its checksum or belongs to another manifest is a CacheError."""
        path = self.root / CAMERAS_FILE
        if not path.is_file():
            return None
        labels = self.root / "labels.json"
        digest = read_json(labels).get("cameras_sha256") if labels.is_file() else None
        try:
            if digest and file_sha256(path) != digest:
                raise ValueError("checksum mismatch")
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
            if str(arrays.pop("manifest_hash")) != self.manifest["hash"]:
                raise ValueError("written for another manifest")
        except Exception as e:  # a truncated zip, a missing key, a mismatch
            raise CacheError(f"label cache file {path} is corrupt or stale ({e}); delete {labels} and run "
                             "lit3d label to align again") from None
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

    def load_pairs(self, n_shards: int, budget_bytes: int | None = None) -> tuple[np.ndarray, "PairShards"]:
        """Edges (E, 2) of the teacher shards, in shard order, and their outputs read lazily (:class:`PairShards`:
        ``pairs["pts_i"][rows]`` reads only the shards of those rows), so alignment never holds them all."""
        pairs = PairShards([self.shard_path(s) for s in range(n_shards)],
                           PairShards.BUDGET_BYTES if budget_bytes is None else budget_bytes)
        return pairs.edges_E2, pairs


class PairShards(Mapping):
    """Teacher outputs of a list of shard files as one lazily read table of E edges.

    ``pairs[key]`` is a :class:`ShardedArray` of shape (E, ...) for every array of the shards (``pts_i``,
    ``conf_i``, ...); indexing it with edge ids reads only the shards holding them, one array of the file at a
    time. The arrays read last are kept up to ``budget_bytes`` (least recently used dropped first), so reading
    edges in a local order loads each shard about once while memory stays bounded whatever the number of shards.
    """

    BUDGET_BYTES = 256 << 20
    """Default size of the cache of recently read shard arrays."""

    def __init__(self, paths: list[Path], budget_bytes: int = BUDGET_BYTES):
        self.paths, self.budget_bytes = [Path(p) for p in paths], budget_bytes
        self._cache: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        edges, self._specs = [], {}
        for s, path in enumerate(self.paths):
            try:
                with np.load(path) as f:
                    edges.append(f["edges"].reshape(-1, 2))
                    if s == 0:  # trailing shapes and types of every array (all shards hold the same)
                        self._specs = {k: (f[k].shape[1:], f[k].dtype) for k in f.files if k != "edges"}
            except Exception as e:
                raise CacheError(f"teacher shard {path} is missing or corrupt ({e})") from None
        self.edges_E2 = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
        self._start = np.cumsum([0] + [len(e) for e in edges])

    def __getitem__(self, key: str) -> "ShardedArray":
        if key not in self._specs:
            raise KeyError(key)
        shape, dtype = self._specs[key]
        return ShardedArray(self, key, (len(self.edges_E2), *shape), dtype)

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def rows(self, key: str, ids) -> np.ndarray:
        """Array ``key`` at edges ``ids`` (any order, repeats allowed), shape (len(ids), ...)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        E = len(self.edges_E2)
        if len(ids) and (ids.min() < 0 or ids.max() >= E):
            raise IndexError(f"edge ids outside 0..{E - 1} of the teacher shards")
        shape, dtype = self._specs[key]
        out = np.empty((len(ids), *shape), dtype)
        shard_of = np.searchsorted(self._start, ids, side="right") - 1
        for s in np.unique(shard_of):
            at = shard_of == s
            out[at] = self._member(int(s), key)[ids[at] - self._start[s]]
        return out

    def _member(self, shard: int, key: str) -> np.ndarray:
        array = self._cache.pop((shard, key), None)
        if array is None:
            try:
                with np.load(self.paths[shard]) as f:
                    array = f[key]
            except Exception as e:
                raise CacheError(f"teacher shard {self.paths[shard]} is missing or corrupt ({e})") from None
            self._cached_bytes += array.nbytes
        self._cache[(shard, key)] = array
        while self._cached_bytes > self.budget_bytes and len(self._cache) > 1:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return array


class ShardedArray:
    """One array of :class:`PairShards` (E, ...), read on indexing: ``a[rows]``, ``a[k0:k1]``, ``a[e]``."""

    def __init__(self, pairs: PairShards, key: str, shape: tuple[int, ...], dtype: np.dtype):
        self.pairs, self.key, self.shape, self.dtype = pairs, key, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rest = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"edge {index} outside the {len(self)} edges of the teacher shards")
            out = self.pairs.rows(self.key, [index % len(self)])[0]
        else:
            if isinstance(index, slice):
                ids = np.arange(*index.indices(len(self)))
            else:
                ids = np.asarray(index)
                ids = np.flatnonzero(ids) if ids.dtype == bool else ids
            out = self.pairs.rows(self.key, ids)
            rest = (slice(None), *rest)
        return out[rest] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)
