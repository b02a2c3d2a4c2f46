"""Moved to :mod:`dpjax.cli.audit` (``dpjax audit``); kept for old imports."""

from dpjax.cli import main as main
from dpjax.cli.audit import register as register
