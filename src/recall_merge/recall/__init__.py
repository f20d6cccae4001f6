"""RECALL: typical samples, hidden-state representations, per-layer similarity, the merge rule."""
