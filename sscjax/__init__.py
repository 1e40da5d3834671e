"""sscjax: explainable, fully automated Goh scoring of interstitial lung disease in chest CT (JAX)."""

__version__ = "0.1.0"
