"""Synthetic chest-CT cohorts ("phantoms") with exact ground truth for every part of the toolkit.

A phantom patient is analytic anatomy (body wall, ribs, spine, heart, aorta and great vessels, trachea and
bronchi, lungs with branching vessels, diaphragm, liver, CT table) whose landmarks define the five Goh
levels, plus ground-glass and reticulation regions whose area ratios on the level slices are the exact
scores. `generate_patient` draws one patient; `write_cohort` writes a cohort folder in the toolkit's format;
`level_truth` gives a patient's level slices and exact scores by drawing only those five slices.
"""

from sscjax.phantom.cohort import patient_seed, write_cohort
from sscjax.phantom.patient import PhantomCase, generate_patient, level_truth
from sscjax.phantom.presets import PRESETS, Preset

__all__ = ["PRESETS", "PhantomCase", "Preset", "generate_patient", "level_truth", "patient_seed", "write_cohort"]
