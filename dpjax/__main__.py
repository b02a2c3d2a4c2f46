"""``python -m dpjax ...``: the ``dpjax`` command."""

import sys

from dpjax.cli import console

sys.exit(console())
