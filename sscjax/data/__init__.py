"""Cohorts (the dataset folder format), their validation and reproducible patient splits (and each fold's); slice extraction,
sampling, synthesis and loading live in sibling modules."""

from sscjax.data.cohort import Cohort, LevelRow, cohort_summary, ensure_splits, fold_split, load_cohort, n_folds
from sscjax.data.splits import Splits, make_splits, read_splits, write_splits

__all__ = [
    "Cohort",
    "LevelRow",
    "Splits",
    "cohort_summary",
    "ensure_splits",
    "fold_split",
    "load_cohort",
    "make_splits",
    "n_folds",
    "read_splits",
    "write_splits",
]
