"""Privacy accounting: events, RDP and PLD accountants, calibration.

Pure accountants live in :mod:`dpjax.accounting.rdp` and
:mod:`dpjax.accounting.pld` (``init -> compose -> epsilon``); the functions
here are host conveniences returning Python floats.
"""

from dpjax.accounting.api import delta as delta
from dpjax.accounting.api import epsilon as epsilon
from dpjax.accounting.api import epsilon_curve as epsilon_curve
from dpjax.accounting.calibrate import calibrate_noise_multiplier as calibrate_noise_multiplier
from dpjax.accounting.calibrate import calibrate_sampling_rate as calibrate_sampling_rate
from dpjax.accounting.calibrate import calibrate_steps as calibrate_steps
from dpjax.accounting.events import Composed as Composed
from dpjax.accounting.events import Event as Event
from dpjax.accounting.events import GaussianEvent as GaussianEvent
from dpjax.accounting.events import LaplaceEvent as LaplaceEvent
from dpjax.accounting.events import PoissonSampledGaussian as PoissonSampledGaussian
from dpjax.accounting.events import (
    SampledWithoutReplacementGaussian as SampledWithoutReplacementGaussian,
)
from dpjax.accounting.events import SelfComposed as SelfComposed
from dpjax.accounting.events import dp_sgd_event as dp_sgd_event

__all__ = [
    "Event",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledGaussian",
    "SampledWithoutReplacementGaussian",
    "Composed",
    "SelfComposed",
    "dp_sgd_event",
    "epsilon",
    "epsilon_curve",
    "delta",
    "calibrate_noise_multiplier",
    "calibrate_steps",
    "calibrate_sampling_rate",
]
