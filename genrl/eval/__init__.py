"""Evaluation: metrics, benchmarks and reports."""
