"""lit3d: distil 3D foundation models into small, fast, scene-specific pointmap students.

The pipeline, one package per stage, data flowing one way:
``data`` (scenes) -> ``pairs`` (scene graphs) -> ``teachers`` (pairwise pointmaps) -> ``align`` (one world
frame) -> ``cache`` (label cache + datamodule) -> ``students`` (networks + LightningModule) -> ``metrics``.
Commands: ``lit3d fit | label | evaluate | localize | report | sweep | bench`` (each also ``python -m
lit3d.<command>``). In Python: ``lit3d.fit.fit(lit3d.config.load_config([...])) -> metrics`` and
``lit3d.localize(run_dir_or_model, images, K) -> [PoseResult]``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``lit3d.localize`` on first use (importing torch and the students only when needed)."""
    if name == "localize":
        import importlib

        return importlib.import_module("lit3d.localize")
    raise AttributeError(f"module 'lit3d' has no attribute {name!r}")
