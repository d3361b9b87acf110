"""Pure science functions on numpy arrays and astropy objects.

Pixel convention everywhere: 0-based pixel indices as numpy and astropy use
them, ``x`` is the column (FITS axis 1) and ``y`` the row (FITS axis 2); the
centre of the first pixel is ``(0, 0)``. Nothing in this package touches
Dagster, and only :mod:`astrid_assets.science.fitsio` touches files.
"""
