"""trainmap's analysis: HMM training maps over many runs' metric sequences (no torch)."""
