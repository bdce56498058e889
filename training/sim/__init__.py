"""Synthetic KITTI-format LiDAR object dataset: scene sampling, exact vectorised ray casting, KITTI labels.

Modules: config (options), sensor (HDL-64E beams, noise, reflectance), shapes (analytic primitives and
object models), scene (random street layouts), raycast (ray/primitive intersection with culling),
labels (visibility, occlusion, truncation -> KittiObjects), writer (atomic KITTI files), generate (one frame,
many frames), plot (BEV picture).
"""
