"""Training: dataset readers and splits, sampling, the training loop, checkpoints, DDP, card building.

Import submodules directly (``from MedTranslateLib.training.loop import train``); this package stays
light so the command line starts fast.
"""
