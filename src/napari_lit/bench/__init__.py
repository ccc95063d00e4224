"""Benchmark: simulated users, metrics, runner."""
