"""Exporters: sending files to destinations, DICOM (C-STORE) and DICOMweb (STOW-RS)."""
