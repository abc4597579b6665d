"""Exporters: sending files to DICOM destinations."""
