"""dpjax's DP-FedAvg deployed on Flower 1.42 (``pip install dpjax[flower]``).

The vmapped simulation (``dpjax.federated.DPFedAvg.round``) and a Flower
deployment run the same functions: a Flower ``ClientApp`` calls
``DPFedAvg.client_update`` (local training, clipping) on each client's
machine; the ``ServerApp`` draws the Poisson cohort and the keys, adds the
noise, steps the server optimizer and accounts. See docs/federated_flower.md.

- :mod:`~dpjax.federated.flower.rounds`: ``plan_round`` / ``finish_round``,
  the round split at the network, and the message encodings (no Flower needed);
- :mod:`~dpjax.federated.flower.privacy`: ``deployed_privacy``, user-level
  epsilon with and without sampling amplification;
- :mod:`~dpjax.federated.flower.options`: ``ServerOptions`` from a run config;
- :mod:`~dpjax.federated.flower.apps`: ``make_client_app``,
  ``make_server_app``, ``run_server`` (these import ``flwr``);
- :mod:`~dpjax.federated.flower.federation`: ``LocalFederation``, a SuperLink
  and SuperNodes as local processes; ``write_app``;
- :mod:`~dpjax.federated.flower.demo`: a small task shared by the tests and
  the benchmark; ``write_demo_app``;
- :mod:`~dpjax.federated.flower.record`: the server's run record.

Names load on first access; only the ``apps`` names need Flower installed.
"""

from dpjax._lazy import attach

_NAMES = {
    "ClientReply": "dpjax.federated.flower.rounds:ClientReply",
    "DeployedRound": "dpjax.federated.flower.rounds:DeployedRound",
    "RoundPlan": "dpjax.federated.flower.rounds:RoundPlan",
    "finish_round": "dpjax.federated.flower.rounds:finish_round",
    "plan_round": "dpjax.federated.flower.rounds:plan_round",
    "round_key": "dpjax.federated.flower.rounds:round_key",
    "DeployedPrivacy": "dpjax.federated.flower.privacy:DeployedPrivacy",
    "deployed_privacy": "dpjax.federated.flower.privacy:deployed_privacy",
    "ServerOptions": "dpjax.federated.flower.options:ServerOptions",
    "make_client_app": "dpjax.federated.flower.apps:make_client_app",
    "make_server_app": "dpjax.federated.flower.apps:make_server_app",
    "run_server": "dpjax.federated.flower.apps:run_server",
    "LocalFederation": "dpjax.federated.flower.federation:LocalFederation",
    "write_app": "dpjax.federated.flower.federation:write_app",
    "FlowerTask": "dpjax.federated.flower.demo:FlowerTask",
    "write_demo_app": "dpjax.federated.flower.demo:write_demo_app",
    "read_record": "dpjax.federated.flower.record:read_record",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = sorted(_NAMES)
