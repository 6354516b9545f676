"""Exports: coloured point clouds as PLY (``ply``) and students as TorchScript / ONNX, verified (``model``)."""
from lit3d.export.model import (ExportError, ExportResult, WorldPointmap, export_onnx, export_student,
                                export_torchscript, read_metadata, student_metadata)
from lit3d.export.ply import read_ply, write_ply

__all__ = ["ExportError", "ExportResult", "WorldPointmap", "export_onnx", "export_student", "export_torchscript",
           "read_metadata", "read_ply", "student_metadata", "write_ply"]
