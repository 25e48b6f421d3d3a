"""``python3 -m fem_mfc`` is the ``fem-mfc`` command."""
import sys

from .cli import main

sys.exit(main())
