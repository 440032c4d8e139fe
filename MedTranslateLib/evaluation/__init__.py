"""Evaluation: SynthRAD metrics, folder evaluation, HTML report, uncertainty analysis, OOD warnings."""
