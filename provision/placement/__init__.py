"""Who runs what, where, and why: the profile, the fit of each model, instances, power."""
