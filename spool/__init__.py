"""The spool: the only part of the adapter the DICOM SCP writes to."""
