"""``python -m dpjax ...``: the ``dpjax`` command."""

import sys

from dpjax.cli import console

if __name__ == "__main__":
    sys.exit(console())
