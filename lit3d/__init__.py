"""lit3d: distil 3D foundation models into small, fast, scene-specific pointmap students.

The pipeline, one package per stage, data flowing one way:
``data`` (scenes) -> ``pairs`` (scene graphs) -> ``teachers`` (pairwise pointmaps) -> ``align`` (one world
frame) -> ``cache`` (label cache + datamodule) -> ``students`` (networks + LightningModule) -> ``metrics``.
Commands: ``python -m lit3d.fit``, ``lit3d.label``, ``lit3d.evaluate``, ``lit3d.report``, ``lit3d.sweep``,
``lit3d.bench``. In Python: ``lit3d.fit.fit(lit3d.config.load_config([...])) -> metrics``.
"""

__version__ = "0.1.0"
