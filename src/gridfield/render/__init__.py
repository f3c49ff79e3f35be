"""Rays, occupancy grid, packed ray marching and volume rendering (nerfacc style, plain PyTorch).

Modules: ``rays`` (cameras, pixel-centre rays, box intersection, orbits), ``distortion`` (OpenCV and
fisheye lens models), ``paths`` (spiral, interpolated and file camera paths), ``occupancy``
(occupancy grid, space carving), ``marching`` (packed samples), ``volrend`` (transmittance, weights,
accumulation), ``pipeline`` (training and early-terminating evaluation renders), ``outputs`` (images, GIFs,
checkpoints); the spherical harmonics are in :mod:`gridfield.functional.sh`. Import the submodules directly; nothing is
imported here.
"""
