"""Reading the host: live probes (NVML, OS facts, runtimes) and recorded snapshots -> a Rig,
and what kind of rig it is."""
