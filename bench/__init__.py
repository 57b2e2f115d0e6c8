"""Benchmarks: standalone scripts that print figures (not pass/fail). See bench/README.md."""
