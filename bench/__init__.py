"""raystream benchmarks. Each prints events/s with the exact command that produced it."""
