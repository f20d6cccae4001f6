"""Task sources for merges and continual learning: BIG-bench, BBC News, local files, HF schemas."""
