"""``python -m gridtao``: the same as the ``gridtao`` command."""

import sys

from gridtao.cli.main import main

sys.exit(main())
