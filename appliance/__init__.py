"""Reckoning: migrate a policy-bound agent workload to a frozen, signed LoRA specialist.

The library is the product. The `reckon` CLI (appliance.cli) and the Textual console (tui)
are thin shells over it and share one job model (appliance.jobs).
"""

__version__ = "0.1.0"
