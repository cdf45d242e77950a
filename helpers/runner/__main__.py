"""``python -m helpers.runner``: the ``workbooks`` command line."""

import sys

from helpers.runner.cli import main

sys.exit(main())
