"""The DICOM SCP: association admission, C-ECHO and C-STORE into the spool."""
