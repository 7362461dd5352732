"""kinspect: a live kernel inspector for x86_64."""

__version__ = "0.1.0"
