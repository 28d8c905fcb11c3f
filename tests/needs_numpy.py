"""Imported first by the test scripts that use NumPy: when the python3 found
first on PATH has no NumPy (a private interpreter, say) and Debian's
/usr/bin/python3 exists, the running script starts again under that one.
Otherwise the ImportError stands."""

import os
import sys

try:
    import numpy  # noqa: F401
except ImportError:
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") \
            and sys.argv and os.path.isfile(sys.argv[0]):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise
