"""Privacy auditing: empirical epsilon lower bounds and membership inference.

An accountant's epsilon is a proof on paper; a bug in clipping or noise
scaling voids it silently. The audits here measure what an attacker can
actually distinguish and turn it into a lower bound on epsilon that holds
with a chosen confidence; a correct implementation's bound stays below the
accountant's, a broken one's rises above it.

* ``audit_dp_sgd`` / ``audit_mechanism`` / ``canary_scores``: thousands of
  runs of a private step with and without a canary in one jitted call
  (Jagielski, Ullman, Oprea 2020; Nasr et al. 2021).
* ``one_run_audit`` / ``audit_dp_sgd_one_run``: one training run, many
  canaries (Steinke, Nasr, Jagielski 2023).
* ``roc_curve``, ``lira_offline_scores``, ``membership_report``: membership
  inference on a trained model (loss threshold, offline LiRA; Carlini et al.
  2022). The experiment on the digits demo is :mod:`dpjax.digits.mia`.
"""

from dpjax.audit.mechanism import VARIANTS as VARIANTS
from dpjax.audit.mechanism import MechanismAudit as MechanismAudit
from dpjax.audit.mechanism import audit_dp_sgd as audit_dp_sgd
from dpjax.audit.mechanism import audit_mechanism as audit_mechanism
from dpjax.audit.mechanism import canary_scores as canary_scores
from dpjax.audit.mechanism import dp_sgd_release as dp_sgd_release
from dpjax.audit.mia import RocCurve as RocCurve
from dpjax.audit.mia import lira_offline_scores as lira_offline_scores
from dpjax.audit.mia import logit_confidence as logit_confidence
from dpjax.audit.mia import loss_threshold_scores as loss_threshold_scores
from dpjax.audit.mia import membership_report as membership_report
from dpjax.audit.mia import plot_roc as plot_roc
from dpjax.audit.mia import roc_curve as roc_curve
from dpjax.audit.one_run import OneRunAudit as OneRunAudit
from dpjax.audit.one_run import audit_dp_sgd_one_run as audit_dp_sgd_one_run
from dpjax.audit.one_run import one_run_audit as one_run_audit
from dpjax.audit.stats import AuditResult as AuditResult
from dpjax.audit.stats import clopper_pearson as clopper_pearson
from dpjax.audit.stats import empirical_epsilon as empirical_epsilon
from dpjax.audit.stats import one_run_epsilon as one_run_epsilon
from dpjax.audit.stats import one_run_p_value as one_run_p_value

__all__ = [
    "VARIANTS",
    "AuditResult",
    "MechanismAudit",
    "OneRunAudit",
    "RocCurve",
    "audit_dp_sgd",
    "audit_dp_sgd_one_run",
    "audit_mechanism",
    "canary_scores",
    "clopper_pearson",
    "dp_sgd_release",
    "empirical_epsilon",
    "lira_offline_scores",
    "logit_confidence",
    "loss_threshold_scores",
    "membership_report",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_p_value",
    "plot_roc",
    "roc_curve",
]
