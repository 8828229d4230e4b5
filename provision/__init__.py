"""gpu-provision: probe a multi-GPU host, decide placement, render, apply and verify."""

__version__ = "0.1.0"
