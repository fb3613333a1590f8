"""Benchmarks that print their figures (no timed tests): plain functions the bench entrypoint calls."""
