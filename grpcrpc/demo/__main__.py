"""`python -m grpcrpc.demo` (what `make demo` runs)."""

from __future__ import annotations

import sys

try:
    from grpcrpc.demo import main

    sys.exit(main())
except KeyboardInterrupt:  # before the demo had started anything (it handles its own)
    sys.exit(130)
