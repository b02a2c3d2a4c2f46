"""Anonymization of tables."""
from dpjax.anonymize.hierarchy import CategoryTree as CategoryTree
from dpjax.anonymize.hierarchy import numeric_range as numeric_range
from dpjax.anonymize.hierarchy import truncate_date as truncate_date
from dpjax.anonymize.hierarchy import zip_prefix as zip_prefix
from dpjax.anonymize.mondrian import MondrianResult as MondrianResult
from dpjax.anonymize.mondrian import mondrian as mondrian
