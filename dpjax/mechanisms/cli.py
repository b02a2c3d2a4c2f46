"""Moved to :mod:`dpjax.cli.query` (``dpjax query``, ``dpjax budget``); kept for old imports."""

from dpjax.cli.query import register as register
from dpjax.cli.query import run as run
