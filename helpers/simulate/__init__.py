"""Seeded simulators that make the sample runs in data_samples/ (``make data``)."""
