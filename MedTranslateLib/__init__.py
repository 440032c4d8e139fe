"""MedTranslate backend: GUI-free medical image translation (MR -> CT, CBCT -> CT, T1 -> T2, ...).

Heavy dependencies (torch, MONAI, SimpleITK) are imported lazily by the submodules that need them,
so ``import MedTranslateLib`` and ``medtranslate --help`` stay fast.
"""

__version__ = "0.1.0"
