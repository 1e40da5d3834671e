"""Cohorts (the dataset folder format), their validation and reproducible patient splits; slice extraction,
sampling, synthesis and loading live in sibling modules."""

from sscjax.data.cohort import Cohort, LevelRow, cohort_summary, ensure_splits, load_cohort
from sscjax.data.splits import Splits, make_splits, read_splits, write_splits

__all__ = [
    "Cohort",
    "LevelRow",
    "Splits",
    "cohort_summary",
    "ensure_splits",
    "load_cohort",
    "make_splits",
    "read_splits",
    "write_splits",
]
