"""Benchmark scripts: one job each, results under benchmarks/results/ (see BENCHMARKS.md)."""
