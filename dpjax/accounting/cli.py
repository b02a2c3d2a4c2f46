"""Moved to :mod:`dpjax.cli.accounting` (``dpjax epsilon``, ``dpjax calibrate``); kept for old
imports."""

from dpjax.cli.accounting import register as register
