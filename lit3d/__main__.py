"""``python -m lit3d COMMAND [args]``: the same front door as the ``lit3d`` console script."""
import sys

from lit3d.cli import main

sys.exit(main())
