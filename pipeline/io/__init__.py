"""Ingest and write volumes: files (``volumes``), DICOM series (``dicom``), data sets (``datasets``);
``sitk_bridge`` converts between ``Volume`` and SimpleITK images."""
