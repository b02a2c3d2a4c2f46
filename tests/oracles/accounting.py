"""Independent references for the accountant tests: Google's dp_accounting and Microsoft's
prv_accountant (test dependencies only), on the Poisson-subsampled Gaussian."""

import warnings

from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant


def dp_pld(q, sigma, steps, delta):
    """dp_accounting's PLD epsilon at value discretization 1e-4 (an upper bound)."""
    a = PLDAccountant(value_discretization_interval=1e-4)
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return a.get_epsilon(delta)


def prv(q, sigma, steps, delta):
    """prv_accountant's (lower, estimate, upper) epsilon."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

        a = PRVAccountant(
            prvs=[
                PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)
            ],
            max_self_compositions=[steps],
            eps_error=0.01,
            delta_error=delta / 1000,
        )
        return a.compute_epsilon(delta=delta, num_self_compositions=[steps])
