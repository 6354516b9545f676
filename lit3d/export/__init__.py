"""Exports: coloured point clouds as PLY (``ply``) and students as TorchScript / ONNX, verified (``model``)."""
from lit3d.export.model import ExportResult, ExportError, export_onnx, export_torchscript
from lit3d.export.ply import read_ply, write_ply

__all__ = ["ExportError", "ExportResult", "export_onnx", "export_torchscript", "read_ply", "write_ply"]
