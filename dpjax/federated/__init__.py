"""User-level differentially private federated learning on a vmapped client cohort.

- :mod:`~dpjax.federated.data`: ``FederatedData`` (padded ``[clients,
  max_examples, ...]`` arrays with a mask), ``federated_data``,
  ``dirichlet_split`` (non-IID label skew);
- :mod:`~dpjax.federated.cohort`: ``CohortSampler``, Poisson client sampling
  into a padded cohort (truncation counted in delta);
- :mod:`~dpjax.federated.local`: ``make_local_update`` (local steps under
  ``lax.scan``, optax inside, optional example-level DP-SGD);
- :mod:`~dpjax.federated.aggregation`: ``clip_updates``, ``aggregate`` (the
  step secure aggregation replaces);
- :mod:`~dpjax.federated.fedavg`: ``DPFedAvg`` (server ``init``/``round``,
  FedAvgM / FedAdam server optimizers, adaptive clipping, local DP);
- :mod:`~dpjax.federated.ftrl`: ``DPFTRL`` (DP-FTRL with tree aggregation,
  restarted per epoch; no sampling amplification);
- :mod:`~dpjax.federated.fedbuff`: ``FedBuff`` (buffered asynchronous
  aggregation with staleness weights <= 1 and a participation cap);
- :mod:`~dpjax.federated.secure`: ``SecureDPFedAvg`` (distributed Skellam
  noise summed under secure aggregation: the server sees only the noisy sum);
- :mod:`~dpjax.federated.tree`: ``tree_aggregator`` (noisy prefix sums);
- :mod:`~dpjax.federated.accounting`: ``federated_privacy_spent``,
  ``calibrate_noise_multiplier``, local and record-level views;
- :mod:`~dpjax.federated.timing`: ``time_rounds`` (rounds/s, clients/s);
- :mod:`~dpjax.federated.job`: the ``dpjax federated`` job.

Names load on first access, so ``dpjax federated --help`` does not load jax.
"""

from dpjax._lazy import attach

_NAMES = {
    "ClientBatch": "dpjax.federated.data:ClientBatch",
    "FederatedData": "dpjax.federated.data:FederatedData",
    "federated_data": "dpjax.federated.data:federated_data",
    "dirichlet_split": "dpjax.federated.data:dirichlet_split",
    "Cohort": "dpjax.federated.cohort:Cohort",
    "CohortSampler": "dpjax.federated.cohort:CohortSampler",
    "LocalUpdateFn": "dpjax.federated.local:LocalUpdateFn",
    "LocalDPSGD": "dpjax.federated.local:LocalDPSGD",
    "make_local_update": "dpjax.federated.local:make_local_update",
    "ClippedUpdates": "dpjax.federated.aggregation:ClippedUpdates",
    "clip_updates": "dpjax.federated.aggregation:clip_updates",
    "aggregate": "dpjax.federated.aggregation:aggregate",
    "AdaptiveClipping": "dpjax.federated.fedavg:AdaptiveClipping",
    "ClientResult": "dpjax.federated.fedavg:ClientResult",
    "DPFedAvg": "dpjax.federated.fedavg:DPFedAvg",
    "FedAvgState": "dpjax.federated.fedavg:FedAvgState",
    "RoundMetrics": "dpjax.federated.fedavg:RoundMetrics",
    "centred_count": "dpjax.federated.fedavg:centred_count",
    "client_keys": "dpjax.federated.fedavg:client_keys",
    "server_optimizer": "dpjax.federated.fedavg:server_optimizer",
    "split_noise": "dpjax.federated.fedavg:split_noise",
    "DPFTRL": "dpjax.federated.ftrl:DPFTRL",
    "FtrlState": "dpjax.federated.ftrl:FtrlState",
    "FedBuff": "dpjax.federated.fedbuff:FedBuff",
    "FedBuffState": "dpjax.federated.fedbuff:FedBuffState",
    "inverse_sqrt_staleness": "dpjax.federated.fedbuff:inverse_sqrt_staleness",
    "SecureAggregation": "dpjax.federated.secure:SecureAggregation",
    "SecureDPFedAvg": "dpjax.federated.secure:SecureDPFedAvg",
    "SecureFedAvgState": "dpjax.federated.secure:SecureFedAvgState",
    "tree_aggregator": "dpjax.federated.tree:tree_aggregator",
    "calibrate_noise_multiplier": "dpjax.federated.accounting:calibrate_noise_multiplier",
    "federated_privacy_spent": "dpjax.federated.accounting:federated_privacy_spent",
    "local_privacy_spent": "dpjax.federated.accounting:local_privacy_spent",
    "record_level_event": "dpjax.federated.accounting:record_level_event",
    "FederatedConfig": "dpjax.federated.config:FederatedConfig",
    "RoundTiming": "dpjax.federated.timing:RoundTiming",
    "time_rounds": "dpjax.federated.timing:time_rounds",
    "run_federated": "dpjax.federated.job:run_federated",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = sorted(_NAMES)
