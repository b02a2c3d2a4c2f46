"""Anonymization of tables: masking, keyed pseudonyms, generalization, k-anonymity.

Direct identifiers are masked (:func:`mask_email`, :func:`mask_phone`,
:func:`mask_card`, :func:`mask_keep_last`, :func:`format_preserving`), replaced by
keyed HMAC-SHA256 pseudonyms (:func:`pseudonymize`; keys from :func:`write_key`), by
consistent fake values (:func:`substitute`) or suppressed. Quasi-identifiers are generalized by
hierarchies (:func:`numeric_range`, :func:`truncate_date`, :func:`zip_prefix`,
:class:`CategoryTree`) or by Mondrian partitioning to k-anonymity, l-diversity and
t-closeness (:func:`mondrian`). :func:`measure` and friends report k, l, t and
information loss; :func:`anonymize` does all of it on a DataFrame.
"""

from dpjax.anonymize.hierarchy import CategoryTree as CategoryTree
from dpjax.anonymize.hierarchy import numeric_range as numeric_range
from dpjax.anonymize.hierarchy import truncate_date as truncate_date
from dpjax.anonymize.hierarchy import zip_prefix as zip_prefix
from dpjax.anonymize.keys import MIN_KEY_BYTES as MIN_KEY_BYTES
from dpjax.anonymize.keys import KeyFilePermissionWarning as KeyFilePermissionWarning
from dpjax.anonymize.keys import generate_key as generate_key
from dpjax.anonymize.keys import load_key as load_key
from dpjax.anonymize.keys import write_key as write_key
from dpjax.anonymize.masking import MASK_RULES as MASK_RULES
from dpjax.anonymize.masking import format_preserving as format_preserving
from dpjax.anonymize.masking import mask as mask
from dpjax.anonymize.masking import mask_card as mask_card
from dpjax.anonymize.masking import mask_email as mask_email
from dpjax.anonymize.masking import mask_keep_last as mask_keep_last
from dpjax.anonymize.masking import mask_phone as mask_phone
from dpjax.anonymize.masking import substitute as substitute
from dpjax.anonymize.masking import suppress as suppress
from dpjax.anonymize.metrics import discernibility as discernibility
from dpjax.anonymize.metrics import entropy_l_diversity as entropy_l_diversity
from dpjax.anonymize.metrics import equivalence_classes as equivalence_classes
from dpjax.anonymize.metrics import k_anonymity as k_anonymity
from dpjax.anonymize.metrics import l_diversity as l_diversity
from dpjax.anonymize.metrics import measure as measure
from dpjax.anonymize.metrics import normalized_certainty_penalty as normalized_certainty_penalty
from dpjax.anonymize.metrics import t_closeness as t_closeness
from dpjax.anonymize.mondrian import MondrianResult as MondrianResult
from dpjax.anonymize.mondrian import mondrian as mondrian
from dpjax.anonymize.pseudonym import pseudonymize as pseudonymize
from dpjax.anonymize.table import AnonymizationResult as AnonymizationResult
from dpjax.anonymize.table import Report as Report
from dpjax.anonymize.table import anonymize as anonymize

__all__ = [
    "AnonymizationResult",
    "CategoryTree",
    "KeyFilePermissionWarning",
    "MASK_RULES",
    "MIN_KEY_BYTES",
    "MondrianResult",
    "Report",
    "anonymize",
    "discernibility",
    "entropy_l_diversity",
    "equivalence_classes",
    "format_preserving",
    "generate_key",
    "k_anonymity",
    "l_diversity",
    "load_key",
    "mask",
    "mask_card",
    "mask_email",
    "mask_keep_last",
    "mask_phone",
    "measure",
    "mondrian",
    "normalized_certainty_penalty",
    "numeric_range",
    "pseudonymize",
    "substitute",
    "suppress",
    "t_closeness",
    "truncate_date",
    "write_key",
    "zip_prefix",
]
