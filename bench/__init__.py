"""Harnesses that produce gridtao's published numbers (see BENCHMARKS.md)."""
