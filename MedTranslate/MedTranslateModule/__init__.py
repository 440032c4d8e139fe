"""Logic, worker process, display and packaging helpers of the MedTranslate Slicer module."""
