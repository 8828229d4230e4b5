"""Placement -> DesiredState: the files, units, power limits and models to create."""
