"""``python -m cacr_lab`` is the ``cacr-lab`` command."""

import sys

from cacr_lab.cli import main

sys.exit(main())
