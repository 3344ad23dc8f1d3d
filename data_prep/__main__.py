"""``python -m data_prep``: same as ``r1-ds prep``."""

import sys

from data_prep.cli import main

sys.exit(main())
