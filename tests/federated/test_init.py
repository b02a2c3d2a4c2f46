"""dpjax.federated's lazy face: the pinned public names, each resolving to its source object."""

import importlib

import pytest

from dpjax import federated as F

PINNED = {
    "AdaptiveClipping", "ClientBatch", "ClientResult", "ClippedUpdates", "Cohort", "CohortSampler",
    "DPFTRL", "DPFedAvg", "FedAvgState", "FedBuff", "FedBuffState", "FederatedConfig",
    "FederatedData", "FtrlState", "LocalDPSGD", "LocalUpdateFn", "RoundMetrics", "RoundTiming",
    "SecureAggregation", "SecureDPFedAvg", "SecureFedAvgState",
    "aggregate", "calibrate_noise_multiplier", "centred_count", "client_keys", "clip_updates",
    "dirichlet_split", "federated_data", "federated_privacy_spent", "inverse_sqrt_staleness",
    "local_privacy_spent", "make_local_update", "record_level_event", "run_federated",
    "server_optimizer", "split_noise", "time_rounds", "tree_aggregator",
}  # fmt: skip


def test_the_public_names_are_pinned():
    assert set(F.__all__) == PINNED


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_name_resolves_to_its_source_object(name):
    module, attr = F._NAMES[name].split(":")
    assert getattr(F, name) is getattr(importlib.import_module(module), attr)
