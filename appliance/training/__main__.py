"""`python -m appliance.training ...` is `reckon train ...`; torchrun can launch it with -m."""

from appliance.cli import main

if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]])
