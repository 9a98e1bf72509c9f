"""`python -m appliance.cli` runs the `reckon` command."""

from appliance.cli import main

main()
