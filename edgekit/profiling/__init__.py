"""Profiling: latency statistics, peak memory, model size, device fingerprint."""
