"""AstrID: astronomical transient identification.

Layers, from the bottom up: ``science`` (pure numpy/astropy), ``ml`` (models),
``storage`` (where bytes live), and thin Dagster wiring on top. Nothing below
imports from above.
"""

__version__ = "0.1.0"
