"""Processing: grouping received instances into jobs, submitting them, reclaiming disk."""
