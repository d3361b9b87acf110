"""Clients of the public survey archives: ZTF at IRSA, Pan-STARRS1 at STScI, SDSS.

Each client finds images through its archive's own query service, builds
the image URLs the archive documents, downloads through one shared HTTP
layer (:mod:`astrid_assets.archives.http`: timeouts, retries with backoff,
a polite pace per host, a download cache keyed by URL, checksums) and maps
the survey's header conventions into :class:`ExposureMetadata`. Nothing
here knows Dagster; a survey source wraps these clients.
"""

from astrid_assets.archives.http import (
    ArchiveError,
    DownloadCache,
    DownloadError,
    HttpClient,
    HttpConfig,
)
from astrid_assets.archives.metadata import ArchiveImage, ExposureMetadata
from astrid_assets.archives.ps1 import Ps1Archive, Ps1File
from astrid_assets.archives.sdss import SdssArchive, SdssFrame
from astrid_assets.archives.ztf import ZtfArchive, ZtfFrame

__all__ = [
    "ArchiveError",
    "ArchiveImage",
    "DownloadCache",
    "DownloadError",
    "ExposureMetadata",
    "HttpClient",
    "HttpConfig",
    "Ps1Archive",
    "Ps1File",
    "SdssArchive",
    "SdssFrame",
    "ZtfArchive",
    "ZtfFrame",
]
