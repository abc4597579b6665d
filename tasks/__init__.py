"""Running outbound work: every job and export, each in its lane, on a bounded pool."""
