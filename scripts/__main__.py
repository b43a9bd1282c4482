"""`python -m vanilla_transformer.scripts <command>`: the same as `vanilla-transformer <command>`."""

import sys

from vanilla_transformer.scripts.cli import main

sys.exit(main())
