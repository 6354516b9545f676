"""``vggt`` teacher: VGGT-1B (Wang et al., CVPR 2025), N views -> cameras and pointmaps in one forward pass."""
from lit3d.teachers.vggt.model import VggtArch, VggtNet, decode_pose
from lit3d.teachers.vggt.teacher import VggtTeacher, VggtTeacherConfig, build_vggt, vggt_frame_transform

__all__ = ["VggtArch", "VggtNet", "VggtTeacher", "VggtTeacherConfig", "build_vggt", "decode_pose",
           "vggt_frame_transform"]
