"""The Goh scoring scheme's names and numbers, defined once for the whole toolkit (no imports beyond numpy).

SCORES are what a clinician scores on each level slice (% of the lung area); PATTERNS are the texture patches
of a cohort's `patterns/` folder (ground glass and reticulation for data synthesis, healthy lung for the heat
maps).
"""

from __future__ import annotations

import numpy as np

SCORES = ("TOT", "GG", "RET")  # total disease extent, ground-glass opacity, reticulation
SCORE_STEP = 5  # clinicians score in steps of 5 %
N_LEVELS = 5
LEVELS = tuple(range(1, N_LEVELS + 1))
LEVEL_NAMES = tuple(f"L{k}" for k in LEVELS)
LESION_PATTERNS = ("gg", "ret")  # the textures data synthesis inserts
HEALTHY_PATTERN = "healthy"  # the texture the heat maps put in
PATTERNS = (*LESION_PATTERNS, HEALTHY_PATTERN)
HU_RANGE = (-1500.0, 1500.0)  # the CT window of both networks' inputs
AIR_HU = -1000.0
AIR = float(np.float32((AIR_HU - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])))  # air in window units (float32)
