"""Microbenchmarks of ferrum_ext's kernels: `python -m benchmarks.run [--only NAME] [--json PATH]`."""
