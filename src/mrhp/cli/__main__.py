"""`python -m mrhp.cli`."""

import sys

from mrhp.cli import main

sys.exit(main())
