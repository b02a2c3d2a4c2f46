"""Moved to :mod:`dpjax.cli.anonymize` (``dpjax anonymize``); kept for old imports."""

from dpjax.cli.anonymize import register as register
from dpjax.cli.anonymize import run as run
