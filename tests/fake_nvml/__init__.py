"""A fake libnvidia-ml.so.1 (C, built in the test session) and the snapshot -> input converter."""
