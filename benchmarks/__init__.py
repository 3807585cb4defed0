"""jaxreg benchmarks: each case is a ratio of two implementations measured side by side."""
