"""Tests of the benchmark package: table logic, shared problems, parsing; fast, nothing timed.

A package (unlike tests/), so that pytest imports these as benchmarks.tests.* with the
repository root on sys.path, and `benchmarks` imports normally."""
