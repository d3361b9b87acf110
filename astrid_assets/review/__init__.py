"""The vetting web app: experts label candidates real, bogus or unsure.

``astrid review`` serves it; ``astrid users add`` creates its users.
:func:`~astrid_assets.review.app.create_app` builds it over a label store,
a catalog and a table store; :mod:`~astrid_assets.review.users` keeps the
users and their password hashes; :mod:`~astrid_assets.review.security` the
CSRF tokens and headers; :mod:`~astrid_assets.review.queue` holds its
queries; :mod:`~astrid_assets.review.stamps` reads the cutouts and
:mod:`~astrid_assets.review.render` draws them and the light curves.
"""

from astrid_assets.review.app import create_app

__all__ = ["create_app"]
