"""Label cache: versioned, resumable, integrity-checked teacher labels on disk, and the datamodule over them."""
from lit3d.cache.build import build_labels, cache_for
from lit3d.cache.store import CacheError, LabelCache

__all__ = ["CacheError", "LabelCache", "build_labels", "cache_for"]
