"""Exchange with other merge tools (mergekit configs)."""
