import sys

from grpcrpc.cli import main

sys.exit(main())
