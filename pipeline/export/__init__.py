"""Exports of a segmented case, one module per format, sharing one label table.

``bundle.write_bundle`` writes them all into one review folder atomically: ``nifti`` (labels,
uncertainty, labels.json), ``dicom_series`` (the series SEG/RTSTRUCT reference), ``dicom_seg``,
``rtstruct``, ``seg_nrrd`` (3D Slicer), ``overlays`` (PNG), ``stats`` (mL, intensity, QA flags),
``report`` (self-contained HTML) and ``manifest`` (hashes, versions, timings).
"""
