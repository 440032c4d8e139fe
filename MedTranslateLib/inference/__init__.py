"""Inference: device selection and the volume prediction engine (2D / 2.5D slices, 3D sliding window)."""
