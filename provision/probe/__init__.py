"""Reading the host: live probes (NVML, OS facts, runtimes) that produce a Rig snapshot."""
