"""DP mechanisms and aggregate queries on data.

Mechanisms (pure functions of a typed ``jax.random.key``, the value, its
sensitivity and the privacy parameter, vectorized over any batch), aggregate
queries on tables with contribution bounding and partition selection, and a
privacy budget filter shared by a query session. See ``docs/mechanisms.md``.
"""

from dpjax.errors import BudgetExceededError as BudgetExceededError
from dpjax.mechanisms._exact import sample_discrete_gaussian as sample_discrete_gaussian
from dpjax.mechanisms._exact import sample_discrete_laplace as sample_discrete_laplace
from dpjax.mechanisms.filter import PrivacyCost as PrivacyCost
from dpjax.mechanisms.filter import PrivacyFilter as PrivacyFilter
from dpjax.mechanisms.noise import analytic_gaussian_sigma as analytic_gaussian_sigma
from dpjax.mechanisms.noise import classic_gaussian_sigma as classic_gaussian_sigma
from dpjax.mechanisms.noise import discrete_gaussian as discrete_gaussian
from dpjax.mechanisms.noise import discrete_laplace as discrete_laplace
from dpjax.mechanisms.noise import gaussian as gaussian
from dpjax.mechanisms.noise import grid_gaussian as grid_gaussian
from dpjax.mechanisms.noise import grid_laplace as grid_laplace
from dpjax.mechanisms.noise import laplace as laplace
from dpjax.mechanisms.noise import zcdp_gaussian_sigma as zcdp_gaussian_sigma
from dpjax.mechanisms.queries import QuerySession as QuerySession
from dpjax.mechanisms.queries import Release as Release
from dpjax.mechanisms.queries import aggregate as aggregate
from dpjax.mechanisms.selection import above_threshold as above_threshold
from dpjax.mechanisms.selection import exponential as exponential
from dpjax.mechanisms.selection import randomized_response as randomized_response
from dpjax.mechanisms.selection import report_noisy_max as report_noisy_max

__all__ = [
    "BudgetExceededError",
    "PrivacyCost",
    "PrivacyFilter",
    "QuerySession",
    "Release",
    "above_threshold",
    "aggregate",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "discrete_gaussian",
    "discrete_laplace",
    "exponential",
    "gaussian",
    "grid_gaussian",
    "grid_laplace",
    "laplace",
    "randomized_response",
    "report_noisy_max",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "zcdp_gaussian_sigma",
]
