"""lm-eval task definitions that read the benchmark data bundled offline (see ``prunelab.zeroshot``)."""
