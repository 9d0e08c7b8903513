"""`python -m attndsl ...` is the `attndsl` command (what `torchrun -m attndsl` runs)."""

import sys

from attndsl.cli import main

sys.exit(main())
