"""DICOM network encodings shared by the SCP and the exporters: PDUs and command sets."""
