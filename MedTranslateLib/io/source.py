"""Where a volume came from (:class:`SourceInfo`): written by the readers, used by the writers to reference it."""

from __future__ import annotations

from dataclasses import dataclass, field

#: DICOM attributes of the source series kept for the synthetic series (study, patient, frame of reference).
DICOM_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
              "StudyDate", "StudyTime", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
              "SeriesDescription", "AccessionNumber")


@dataclass
class SourceInfo:
    """Where a volume came from. ``dicom_tags`` (see :data:`DICOM_TAGS`) is empty for non-DICOM files;
    ``referenced_instances`` lists ``(SOPClassUID, SOPInstanceUID)`` of the DICOM slices in image order;
    ``notes`` what the user should know about how it was read (e.g. which of several DICOM series)."""

    path: str
    format: str
    dicom_tags: dict[str, str] = field(default_factory=dict)
    referenced_instances: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return self.format == "dicom"
