"""The labelled training set for real-bogus classification, made by injection.

Every example is a detection of the difference pipeline on the simulated
survey, labelled by what caused it. For each field and night the exposure is
simulated and calibrated as any other, and then, before subtraction, the
calibrated science image receives

* **real** point sources drawn with the night's true PSF, spanning an ideal
  difference S/N of about 3 to 50: some on empty sky (``psf_empty``), some
  on catalogue galaxies up to one FWHM from their centres (``psf_galaxy``);
* **bogus** artefacts: stars moved by 0.5 to 1.5 px (``dipole``: a
  misregistration), stars scaled by a few per cent (``star_residual``: a
  flux-scaling error), stars whose profile is narrowed (``psf_ring``: the
  narrow-minus-wide residual of a PSF mismatch), sharp 1 to 3 px hits and
  short tracks (``cosmic_ray``), single hot pixels (``hot_pixel``), column
  segments with an offset (``bad_column``) and satellite-like lines
  (``streak``).

The simulator's own transients count as real under their own kinds
(``supernova``, ``variable``, ``asteroid``, ``flare``: a moving asteroid is
real on the sky), and the artefacts the simulated camera made (cosmic rays,
hot pixels, bad columns, streaks, saturated stars) are bogus of their kind
where a detection still finds them. After the subtraction (ZOGY by default),
synthetic anomalies are drawn on the difference image and, consistently, on
its score: bright and dark spots that are not PSF-shaped
(``anomaly_bright``, ``anomaly_dark``) and thin lines (``anomaly_streak``),
present in D but in neither input image.

Detection then runs without vetting at the pipeline's threshold
(:func:`~astrid_assets.science.detection.detect_candidates`, as
:func:`~astrid_assets.science.pipeline.find_candidates` calls it), so that
artefacts the vetting would drop are still examples with their features;
``vetted`` says which detections :func:`find_candidates` keeps. A detection
within 2 px of what was injected or simulated takes its label; one near two
things of different labels, near a real source but not its nearest
detection, of the wrong sign for a real source, or in the ring between the
match radius and the exclusion radius of anything, is dropped as ambiguous;
the rest are ``star_residual`` near a bright catalogue star and
``detection_false`` elsewhere. A line breaks into many detections; only its
strongest two are kept (:attr:`InjectionConfig.max_per_line`).

Everything injected keeps 16 px from everything else (the scarce isolated
stars and galaxies are placed first, then the lines, then the rest), so a
stamp may show neighbours but a detection is never shared. Each row also
carries the U-Net's input image around it (``score_stamps``), and each image
gives U-Net patches whose target marks every real source.

The split is by field and night: an image's rows all go to one split.
Everything is seeded by ``seed`` and the survey's own seed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
from astropy.wcs import WCS
from scipy import ndimage
from scipy.spatial import cKDTree

from astrid_assets.science.cutouts import cutout_stamps, cutout_triplets
from astrid_assets.science.detection import psf_equivalent_fwhm
from astrid_assets.science.injection import difference_snr, inject_point_sources
from astrid_assets.science.pipeline import (
    DiffConfig,
    Subtraction,
    detect_unvetted,
    find_candidates,
    subtract_pair,
)
from astrid_assets.science.processing import (
    CalibrationMasters,
    FieldReference,
    ProcessedExposure,
    build_field_reference,
    make_calibration_masters,
)
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.simulate import (
    SimulatedExposure,
    SurveyConfig,
    field_catalog,
    field_names,
    field_wcs,
    simulate_calibration_frames,
)
from astrid_assets.science.subtraction import fftconvolve
from astrid_assets.science.survey import grid_stars, process_simulated, truth_on_grid

__all__ = [
    "CUTOUT_COLUMNS",
    "FEATURE_COLUMNS",
    "KINDS_BOGUS",
    "KINDS_REAL",
    "META_COLUMNS",
    "SCORE_STAMP_COLUMNS",
    "SPLITS",
    "InjectionConfig",
    "TrainingSet",
    "UNetSet",
    "build_training_set",
    "unet_input_image",
]

FEATURE_COLUMNS: tuple[str, ...] = (
    "score_peak",
    "snr",
    "npix",
    "chi2",
    "fwhm_ratio",
    "ellipticity",
    "sharpness",
    "neg_frac",
    "dipole",
    "n_bad",
    "dist_ref_source",
    "ref_match",
    "dipole_pair",
)
"""Candidate-table columns used as features: shape, sign and significance of the
detection, never its position, time or brightness in ADU. The names are those
of :data:`~astrid_assets.science.detection.CANDIDATE_COLUMNS`, so a candidates
table is scored with the same columns; booleans become 0 and 1."""

KINDS_REAL: tuple[str, ...] = (
    "psf_empty",
    "psf_galaxy",
    "supernova",
    "variable",
    "asteroid",
    "flare",
)
KINDS_BOGUS: tuple[str, ...] = (
    "detection_false",
    "dipole",
    "star_residual",
    "psf_ring",
    "cosmic_ray",
    "hot_pixel",
    "bad_column",
    "streak",
    "anomaly_bright",
    "anomaly_dark",
    "anomaly_streak",
)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
META_COLUMNS: tuple[str, ...] = (
    "label",
    "kind",
    "field",
    "night",
    "split",
    "x",
    "y",
    "positive",
    "snr",
    "mag",
    "snr_injected",
    "vetted",
)
"""The columns every ``TrainingSet.meta`` has, in this order.

``label`` (Int8, 1 real, 0 bogus), ``kind``, ``field``, ``night``, ``split``;
``x``, ``y`` the detection on the reference grid (px); ``positive`` the
detection's sign; ``snr`` its measured S/N (signed, the feature of that
name); ``mag`` the true magnitude of the real source it found (null for
bogus rows); ``snr_injected`` the ideal difference S/N an injected point
source was given (null otherwise); ``vetted`` it is among
:func:`~astrid_assets.science.pipeline.find_candidates`' output."""

CUTOUT_COLUMNS: tuple[str, ...] = ("cutout_science", "cutout_reference", "cutout_difference")
SCORE_STAMP_COLUMNS: tuple[str, ...] = ("unet_difference", "unet_score")
STAMP_SIZE = 63

Progress = Callable[[str], None]

# Kinds of the simulator's own artefacts, as the training set names them.
_NATURAL_KIND = {
    "cosmic_ray": "cosmic_ray",
    "hot_pixel": "hot_pixel",
    "bad_column": "bad_column",
    "streak": "streak",
    "saturated_star": "star_residual",
}
# Simulated truth types the training set counts as real.
_TRUTH_KINDS = ("supernova", "variable", "asteroid", "flare")


@dataclass(frozen=True)
class InjectionConfig:
    """What is injected into each image, and how detections are matched to it.

    Attributes
    ----------
    snr_range : (float, float)
        Ideal difference S/N of the real point sources, drawn log-uniformly.
    galaxy_fraction : float
        Fraction of the real point sources put on catalogue galaxies.
    galaxy_mag_limit : float
        Hosts are catalogue galaxies brighter than this.
    star_mag_range : (float, float)
        Stars that are moved, scaled or given a ring: unsaturated and bright
        enough for the residual to be detected.
    dipole_shift : (float, float)
        Misregistration of a moved star, px.
    scale_error : (float, float)
        Fractional flux error of a scaled star (either sign).
    ring_width : (float, float)
        Width of the narrowed PSF relative to the true one.
    min_separation : float
        Least distance between two injected or simulated things, px on the grid.
    margin : float
        Least distance of an injection from the grid's edge, px.
    match_radius : float
        A detection this close (px) to something takes its label.
    clip : float
        The U-Net's inputs are clipped to plus or minus this.
    bright_star_mag : float
        An unmatched detection within ``bright_star_radius`` FWHM of a
        catalogue star brighter than this is a ``star_residual``.
    bright_star_radius : float
    max_per_line : int
        A line (streak, column segment, track) breaks into many detections;
        only its ``max_per_line`` strongest are kept, so that lines do not
        outnumber everything else.
    """

    snr_range: tuple[float, float] = (3.0, 50.0)
    galaxy_fraction: float = 1.0 / 3.0
    galaxy_mag_limit: float = 22.5
    star_mag_range: tuple[float, float] = (14.0, 20.0)
    dipole_shift: tuple[float, float] = (0.5, 1.5)
    scale_error: tuple[float, float] = (0.05, 0.25)
    ring_width: tuple[float, float] = (0.55, 0.8)
    min_separation: float = 16.0
    margin: float = 24.0
    match_radius: float = 2.0
    clip: float = 50.0
    bright_star_mag: float = 16.5
    bright_star_radius: float = 3.0
    max_per_line: int = 2

    def __post_init__(self) -> None:
        lo, hi = self.snr_range
        if not (0 < lo <= hi):
            raise ValueError(f"snr_range must be positive and increasing, got {self.snr_range}")
        if not 0.0 <= self.galaxy_fraction <= 1.0:
            raise ValueError(f"galaxy_fraction must be in [0, 1], got {self.galaxy_fraction}")
        if self.match_radius <= 0 or self.min_separation <= 2 * self.match_radius:
            raise ValueError("min_separation must exceed twice a positive match_radius")
        if self.clip <= 0:
            raise ValueError(f"clip must be positive, got {self.clip}")


# --------------------------------------------------------------------------
# The data sets


def _as_array(values: np.ndarray, dtype: type, ndim: int, name: str) -> np.ndarray:
    out = np.asarray(values, dtype=dtype)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {out.shape}")
    return out


@dataclass
class TrainingSet:
    """Labelled detections: their triplets, features and description.

    Attributes
    ----------
    triplets : numpy.ndarray
        ``(n, 3, 63, 63)`` float32 science, reference and difference stamps,
        cut as :func:`~astrid_assets.science.pipeline.find_candidates` cuts
        them (raw units, NaN outside the image).
    features : numpy.ndarray
        ``(n, len(FEATURE_COLUMNS))`` float64, NaN where undefined.
    meta : polars.DataFrame
        One row per detection with :data:`META_COLUMNS` (and any others).
    score_stamps : numpy.ndarray or None
        ``(n, 2, 63, 63)`` float32 stamps of the U-Net's input image
        (:func:`unet_input_image`) centred on each detection.
    """

    triplets: np.ndarray
    features: np.ndarray
    meta: pl.DataFrame
    score_stamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.triplets = _as_array(self.triplets, np.float32, 4, "triplets")
        self.features = _as_array(self.features, np.float64, 2, "features")
        n = len(self.triplets)
        if self.triplets.shape[1] != 3:
            raise ValueError(f"triplets must have 3 channels, got shape {self.triplets.shape}")
        if self.features.shape != (n, len(FEATURE_COLUMNS)):
            raise ValueError(
                f"features must have shape ({n}, {len(FEATURE_COLUMNS)}), got {self.features.shape}"
            )
        if self.meta.height != n:
            raise ValueError(f"meta has {self.meta.height} rows for {n} triplets")
        missing = [c for c in META_COLUMNS if c not in self.meta.columns]
        if missing:
            raise ValueError(f"meta lacks the columns {missing}")
        if self.score_stamps is not None:
            self.score_stamps = _as_array(self.score_stamps, np.float32, 4, "score_stamps")
            if len(self.score_stamps) != n or self.score_stamps.shape[1] != 2:
                raise ValueError(
                    f"score_stamps must have shape ({n}, 2, h, w), got {self.score_stamps.shape}"
                )

    def __len__(self) -> int:
        return len(self.triplets)

    def subset(self, split: str | None = None, mask: np.ndarray | None = None) -> TrainingSet:
        """The rows of one split and/or of a boolean mask, as a new set."""
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            keep &= self.meta["split"].to_numpy() == split
        if mask is not None:
            m = np.asarray(mask)
            if m.dtype != bool or m.shape != (len(self),):
                raise ValueError(f"mask must be a boolean array of length {len(self)}")
            keep &= m
        rows = np.flatnonzero(keep)
        return TrainingSet(
            triplets=self.triplets[rows],
            features=self.features[rows],
            meta=self.meta[rows.tolist()] if len(rows) else self.meta.clear(),
            score_stamps=None if self.score_stamps is None else self.score_stamps[rows],
        )

    def class_balance(self) -> dict[str, dict[str, Any]]:
        """Counts per label and per kind, for every split and for ``all``.

        Returns ``{split: {"rows", "real", "bogus", "vetted_real",
        "vetted_bogus", "kinds": {kind: count}}}``, plain ints (JSON-ready).
        """
        out: dict[str, dict[str, Any]] = {}
        split = self.meta["split"].to_numpy()
        label = self.meta["label"].to_numpy()
        kind = self.meta["kind"].to_numpy()
        vetted = self.meta["vetted"].to_numpy()
        for name in ("all", *SPLITS):
            rows = np.ones(len(self), bool) if name == "all" else split == name
            kinds, counts = np.unique(kind[rows], return_counts=True)
            out[name] = {
                "rows": int(rows.sum()),
                "real": int(np.sum(rows & (label == 1))),
                "bogus": int(np.sum(rows & (label == 0))),
                "vetted_real": int(np.sum(rows & (label == 1) & vetted)),
                "vetted_bogus": int(np.sum(rows & (label == 0) & vetted)),
                "kinds": {str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
            }
        return out

    def to_frame(self) -> pl.DataFrame:
        """One row per detection: meta, features, cutouts (and U-Net stamps).

        The cutouts are fixed-size ``pl.Array(pl.Float32, 63 * 63)`` columns
        named like the candidates table's; a feature already in ``meta``
        (``snr``) is written once.
        """
        n = len(self)
        columns: list[pl.Series] = []
        for k, name in enumerate(FEATURE_COLUMNS):
            values = self.features[:, k]
            if name in self.meta.columns:
                shared = self.meta[name].cast(pl.Float64).to_numpy()
                if not np.array_equal(shared, values, equal_nan=True):
                    raise ValueError(f"meta column {name!r} differs from the feature of that name")
                continue
            columns.append(pl.Series(name, values, dtype=pl.Float64))
        stacks = [(CUTOUT_COLUMNS, self.triplets)]
        if self.score_stamps is not None:
            stacks.append((SCORE_STAMP_COLUMNS, self.score_stamps))
        for names, stack in stacks:
            size = stack.shape[-1] * stack.shape[-2]
            for k, name in enumerate(names):
                columns.append(
                    pl.Series(name, stack[:, k].reshape(n, size), dtype=pl.Array(pl.Float32, size))
                )
        return self.meta.with_columns(columns)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> TrainingSet:
        """The inverse of :meth:`to_frame`."""
        missing = [c for c in (*CUTOUT_COLUMNS, *FEATURE_COLUMNS) if c not in frame.columns]
        if missing:
            raise ValueError(f"frame lacks the columns {missing}")
        n = frame.height

        def stack(names: tuple[str, ...]) -> np.ndarray:
            width = frame.schema[names[0]].size  # type: ignore[attr-defined]
            side = math.isqrt(width)
            arrays = [frame[c].to_numpy().reshape(n, side, side) for c in names]
            return np.stack(arrays, axis=1).astype(np.float32, copy=False)

        features = np.column_stack(
            [frame[c].cast(pl.Float64).to_numpy() for c in FEATURE_COLUMNS]
        ).reshape(n, len(FEATURE_COLUMNS))
        has_stamps = all(c in frame.columns for c in SCORE_STAMP_COLUMNS)
        feature_only = set(FEATURE_COLUMNS) - set(META_COLUMNS)
        stamp_cols = set(CUTOUT_COLUMNS) | set(SCORE_STAMP_COLUMNS)
        meta = frame.select([c for c in frame.columns if c not in feature_only | stamp_cols])
        return cls(
            triplets=stack(CUTOUT_COLUMNS),
            features=features,
            meta=meta,
            score_stamps=stack(SCORE_STAMP_COLUMNS) if has_stamps else None,
        )


@dataclass
class UNetSet:
    """Difference-image patches and their maps of real sources, for the U-Net.

    Attributes
    ----------
    inputs : numpy.ndarray
        ``(m, 2, P, P)`` float32: D divided by its noise, and the score
        (S_corr), 0 where masked, clipped (:func:`unet_input_image`).
    targets : numpy.ndarray
        ``(m, 1, P, P)`` float32: 1 within one PSF FWHM of every real
        source (injected point sources and simulated transients that an
        ideal subtraction shows at S/N >= 3), 0 elsewhere, artefacts and
        anomalies included.
    split : numpy.ndarray
        ``(m,)`` str, the split of the image each patch comes from.
    """

    inputs: np.ndarray
    targets: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)


def unet_input_image(
    difference: np.ndarray,
    score: np.ndarray,
    noise: float,
    mask: np.ndarray,
    clip: float = 50.0,
) -> np.ndarray:
    """The U-Net's two input channels for a whole subtraction, ``(2, ny, nx)`` float32.

    Channel 0 is ``D / noise`` (``noise`` the subtraction's
    ``difference_noise``), channel 1 the score; both 0 where ``mask`` is set
    and clipped to ``[-clip, clip]`` so that saturated residuals do not
    dominate a batch.
    """
    if not (np.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be a positive number, got {noise}")
    out = np.empty((2, *difference.shape), dtype=np.float32)
    np.divide(difference, np.float32(noise), out=out[0], casting="unsafe")
    out[1] = score
    out[:, mask] = 0.0
    np.nan_to_num(out, copy=False, nan=0.0, posinf=clip, neginf=-clip)
    np.clip(out, -clip, clip, out=out)
    return out


# --------------------------------------------------------------------------
# What was put where: targets that detections are matched to


@dataclass
class _Targets:
    """Injected or simulated things on the reference grid: points and segments.

    With ``blocked`` (a grid-shaped bool raster) every target added marks the
    pixels within ``separation`` of it, so that finding a free place is a
    look-up rather than a distance to every target.
    """

    kind: list[str] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    seg: list[tuple[float, float, float, float]] = field(default_factory=list)
    radius: list[float] = field(default_factory=list)
    sign: list[int] = field(default_factory=list)
    unique: list[bool] = field(default_factory=list)
    mag: list[float] = field(default_factory=list)
    snr: list[float] = field(default_factory=list)
    delta_flux: list[float] = field(default_factory=list)
    blocked: np.ndarray | None = None
    separation: float = 0.0

    def add(
        self,
        kind: str,
        x0: float,
        y0: float,
        x1: float | None = None,
        y1: float | None = None,
        *,
        radius: float,
        sign: int = 0,
        mag: float = math.nan,
        snr: float = math.nan,
        delta_flux: float = math.nan,
    ) -> None:
        real = kind in KINDS_REAL
        self.kind.append(kind)
        self.label.append(int(real))
        self.seg.append((x0, y0, x0 if x1 is None else x1, y0 if y1 is None else y1))
        self.radius.append(radius)
        self.sign.append(sign)
        self.unique.append(real)
        self.mag.append(mag)
        self.snr.append(snr)
        self.delta_flux.append(delta_flux)
        if self.blocked is not None:
            self._block(*self.seg[-1])

    def _block(self, x0: float, y0: float, x1: float, y1: float) -> None:
        assert self.blocked is not None
        ny, nx = self.blocked.shape
        reach = self.separation
        xa, xb = max(int(math.floor(min(x0, x1) - reach)), 0), int(max(x0, x1) + reach) + 1
        ya, yb = max(int(math.floor(min(y0, y1) - reach)), 0), int(max(y0, y1) + reach) + 1
        xb, yb = min(xb, nx), min(yb, ny)
        if xb <= xa or yb <= ya:
            return
        yy, xx = np.mgrid[ya:yb, xa:xb]
        segment = np.array([[x0, y0, x1, y1]])
        d = _segment_distance(xx.ravel().astype(float), yy.ravel().astype(float), segment)
        self.blocked[ya:yb, xa:xb] |= (d[:, 0] < reach).reshape(yy.shape)

    def is_free(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which grid positions are at least ``separation`` from every target."""
        assert self.blocked is not None
        ny, nx = self.blocked.shape
        ix, iy = np.round(np.atleast_1d(x)).astype(int), np.round(np.atleast_1d(y)).astype(int)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        free = np.zeros(ix.shape, bool)
        free[inside] = ~self.blocked[iy[inside], ix[inside]]
        return free

    def __len__(self) -> int:
        return len(self.kind)

    def segments(self) -> np.ndarray:
        return np.asarray(self.seg, dtype=np.float64).reshape(-1, 4)

    def distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(len(x), len(self))`` distances from points to every target."""
        return _segment_distance(np.asarray(x, float), np.asarray(y, float), self.segments())


def _segment_distance(x: np.ndarray, y: np.ndarray, seg: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (seg[:, k][None, :] for k in range(4))
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    px, py = x[:, None] - x0, y[:, None] - y0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(length2 > 0, (px * dx + py * dy) / np.where(length2 > 0, length2, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy)


class _Layout:
    """Where injections may go: exposure pixels mapped onto the grid, away
    from masks, edges and everything already placed."""

    def __init__(
        self,
        exposure_wcs: WCS,
        grid_wcs: WCS,
        exposure_mask: np.ndarray,
        grid_mask: np.ndarray,
        targets: _Targets,
        config: InjectionConfig,
    ):
        self.exposure_wcs = exposure_wcs
        self.grid_wcs = grid_wcs
        self.exposure_mask = exposure_mask
        self.grid_mask = grid_mask
        self.targets = targets
        self.config = config
        self._grown: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def to_grid(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        world = self.exposure_wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
        gx, gy = self.grid_wcs.world_to_pixel_values(*world)
        return np.asarray(gx, float), np.asarray(gy, float)

    def usable(self, x: np.ndarray, y: np.ndarray, reach: float = 3.0) -> np.ndarray:
        """Which exposure positions land on valid pixels of both images, inside the margin."""
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        gx, gy = self.to_grid(x, y)
        ny, nx = self.grid_mask.shape
        m = self.config.margin
        ok = (gx >= m) & (gx <= nx - 1 - m) & (gy >= m) & (gy <= ny - 1 - m)
        ey, ex = self.exposure_mask.shape
        ok &= (x >= m) & (x <= ex - 1 - m) & (y >= m) & (y <= ey - 1 - m)
        r = int(math.ceil(reach))
        if r not in self._grown:
            # Masked pixels spread over a square of side 2r + 1: one look-up each.
            self._grown[r] = (
                ndimage.maximum_filter(self.exposure_mask, size=2 * r + 1),
                ndimage.maximum_filter(self.grid_mask, size=2 * r + 1),
            )
        exposure_bad, grid_bad = self._grown[r]
        idx = np.flatnonzero(ok)
        ok[idx] = ~(
            exposure_bad[np.round(y[idx]).astype(int), np.round(x[idx]).astype(int)]
            | grid_bad[np.round(gy[idx]).astype(int), np.round(gx[idx]).astype(int)]
        )
        return ok

    def clear(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Which grid positions are at least the separation from every target."""
        return self.targets.is_free(gx, gy)

    def draw(
        self,
        rng: np.random.Generator,
        n: int,
        accept: Callable[[float, float], bool] | None = None,
    ) -> list[tuple[float, float, float, float]]:
        """Up to ``n`` random free exposure positions, one at a time so each
        respects the previous ones; returns (x, y, grid x, grid y).

        ``accept`` may refuse a position."""
        ey, ex = self.exposure_mask.shape
        m = self.config.margin
        out: list[tuple[float, float, float, float]] = []
        for _ in range(max(50 * n, 200)):
            if len(out) == n:
                break
            x, y = rng.uniform(m, ex - 1 - m), rng.uniform(m, ey - 1 - m)
            if (accept is not None and not accept(x, y)) or not self.usable(x, y)[0]:
                continue
            gx, gy = self.to_grid(np.array([x]), np.array([y]))
            if not self.clear(gx, gy)[0]:
                continue
            out.append((x, y, float(gx[0]), float(gy[0])))
            # Reserve the place at once; the caller adds the proper target.
            self.targets.add("_reserved", float(gx[0]), float(gy[0]), radius=0.0)
        return out


def _drop_reserved(targets: _Targets) -> _Targets:
    keep = [i for i, k in enumerate(targets.kind) if k != "_reserved"]
    out = _Targets()
    for name in ("kind", "label", "seg", "radius", "sign", "unique", "mag", "snr", "delta_flux"):
        values = getattr(targets, name)
        setattr(out, name, [values[i] for i in keep])
    return out


# --------------------------------------------------------------------------
# Drawing


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int | None = None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _add_line(
    image: np.ndarray, x0: float, y0: float, x1: float, y1: float, peak: float, sigma: float
) -> None:
    """Add a line with a Gaussian cross-section of ``sigma`` px and ``peak`` on its ridge."""
    reach = 4.0 * sigma + 2.0
    ny, nx = image.shape
    xa, xb = max(int(math.floor(min(x0, x1) - reach)), 0), min(int(max(x0, x1) + reach) + 1, nx)
    ya, yb = max(int(math.floor(min(y0, y1) - reach)), 0), min(int(max(y0, y1) + reach) + 1, ny)
    if xb <= xa or yb <= ya:
        return
    yy, xx = np.mgrid[ya:yb, xa:xb]
    seg = np.array([[x0, y0, x1, y1]])
    d = _segment_distance(xx.ravel().astype(float), yy.ravel().astype(float), seg)[:, 0]
    image[ya:yb, xa:xb] += (peak * np.exp(-0.5 * (d / sigma) ** 2)).reshape(yy.shape)


def _add_spot(
    image: np.ndarray,
    x: float,
    y: float,
    peak: float,
    sigma_major: float,
    sigma_minor: float,
    angle: float,
) -> None:
    """Add an elliptical Gaussian spot of ``peak`` at (x, y)."""
    reach = int(math.ceil(4.0 * sigma_major + 2.0))
    ny, nx = image.shape
    ix, iy = int(round(x)), int(round(y))
    xa, xb = max(ix - reach, 0), min(ix + reach + 1, nx)
    ya, yb = max(iy - reach, 0), min(iy + reach + 1, ny)
    yy, xx = np.mgrid[ya:yb, xa:xb]
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - x) * c + (yy - y) * s
    v = -(xx - x) * s + (yy - y) * c
    image[ya:yb, xa:xb] += peak * np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2))


def _psf_model(shape: tuple[int, int], psf: np.ndarray, x, y, flux) -> np.ndarray:
    """Noiseless sum of PSF-shaped sources (fluxes of either sign)."""
    if np.size(x) == 0:
        return np.zeros(shape)
    return inject_point_sources(np.zeros(shape), psf, x, y, flux).model


# --------------------------------------------------------------------------
# One image


@dataclass
class _ImageRows:
    triplets: np.ndarray
    features: np.ndarray
    meta: pl.DataFrame
    score_stamps: np.ndarray
    patches: np.ndarray
    patch_targets: np.ndarray


def _process(
    config: SurveyConfig, night: str, field_name: str, masters: CalibrationMasters
) -> tuple[SimulatedExposure, ProcessedExposure]:
    """:func:`~astrid_assets.science.survey.process_simulated` with the night's masters given."""
    return process_simulated(config, night, field_name, masters)


class _Masters:
    """A night's calibration masters, kept for the few nights in use."""

    def __init__(self, config: SurveyConfig, keep: int = 4):
        self.config = config
        self.keep = keep
        self.cache: dict[str, CalibrationMasters] = {}

    def __call__(self, night: str) -> CalibrationMasters:
        if night not in self.cache:
            frames = simulate_calibration_frames(self.config, night)
            while len(self.cache) >= self.keep:
                self.cache.pop(next(iter(self.cache)))
            self.cache[night] = make_calibration_masters(frames.biases, frames.flats)
        return self.cache[night]


def _natural_targets(
    targets: _Targets,
    exposure: SimulatedExposure,
    layout: _Layout,
    grid_wcs: WCS,
    fwhm: float,
    config: InjectionConfig,
) -> None:
    """The simulator's transients (real) and camera artefacts (bogus) as targets."""
    truth = truth_on_grid(exposure.truth, grid_wcs)
    r = config.match_radius
    for row in truth:
        kind = str(row["type"])
        if kind not in _TRUTH_KINDS:
            continue
        delta = float(row["delta_flux"])
        targets.add(
            kind,
            float(row["grid_x"]),
            float(row["grid_y"]),
            radius=r,
            sign=1 if delta >= 0 else -1,
            mag=float(row["mag"]),
            delta_flux=delta,
        )
    artefacts = exposure.artefacts
    for row in artefacts:
        kind = _NATURAL_KIND.get(str(row["type"]))
        if kind is None:
            continue
        x0, y0 = layout.to_grid(np.array([row["x"]]), np.array([row["y"]]))
        if np.isfinite(row["x_end"]):
            x1, y1 = layout.to_grid(np.array([row["x_end"]]), np.array([row["y_end"]]))
        else:
            x1, y1 = x0, y0
        radius = r
        if kind == "star_residual":
            radius = r + 2.0 * fwhm + math.sqrt(float(row["npix"]) / math.pi)
        elif kind == "streak":
            radius = r + fwhm
        targets.add(kind, float(x0[0]), float(y0[0]), float(x1[0]), float(y1[0]), radius=radius)


def _catalog_on_exposure(
    config: SurveyConfig, field_name: str, exposure: SimulatedExposure
) -> dict[str, np.ndarray]:
    cat = field_catalog(config, field_name)
    x, y = exposure.wcs.world_to_pixel_values(np.asarray(cat["ra"]), np.asarray(cat["dec"]))
    return {
        "x": np.asarray(x, float),
        "y": np.asarray(y, float),
        "mag": np.asarray(cat["mag"], float),
        "galaxy": np.asarray(cat["type"]) == "galaxy",
        "variable": np.asarray(cat["variable"], bool),
    }


def _place_on_galaxies(
    rng: np.random.Generator,
    n: int,
    layout: _Layout,
    catalog: dict[str, np.ndarray],
    fwhm: float,
    config: InjectionConfig,
) -> list[tuple[float, float, float, float, str]]:
    """Up to ``n`` places within one FWHM of catalogue galaxies' centres."""
    placed: list[tuple[float, float, float, float, str]] = []
    hosts = np.flatnonzero(catalog["galaxy"] & (catalog["mag"] < config.galaxy_mag_limit))
    for i in rng.permutation(hosts):
        if len(placed) >= n:
            break
        radius, angle = fwhm * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        x = catalog["x"][i] + radius * math.cos(angle)
        y = catalog["y"][i] + radius * math.sin(angle)
        if not layout.usable(x, y)[0]:
            continue
        gx, gy = layout.to_grid(np.array([x]), np.array([y]))
        if not layout.clear(gx, gy)[0]:
            continue
        placed.append((x, y, float(gx[0]), float(gy[0]), "psf_galaxy"))
        layout.targets.add("_reserved", float(gx[0]), float(gy[0]), radius=0.0)
    return placed


def _inject_real(
    rng: np.random.Generator,
    n_real: int,
    on_galaxies: list[tuple[float, float, float, float, str]],
    processed: ProcessedExposure,
    exposure: SimulatedExposure,
    reference: FieldReference,
    layout: _Layout,
    catalog: dict[str, np.ndarray],
    fwhm: float,
    config: InjectionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Real point sources: those placed on galaxies, the rest on empty sky.

    Returns the science image and its variance with them added.
    """
    targets = layout.targets
    visible = catalog["mag"] < 23.0
    tree = cKDTree(np.column_stack([catalog["x"][visible], catalog["y"][visible]]))
    placed = list(on_galaxies)

    def empty(x: float, y: float) -> bool:
        return bool(tree.query([x, y])[0] >= 3.0 * fwhm)

    for x, y, gx, gy in layout.draw(rng, n_real - len(placed), accept=empty):
        placed.append((x, y, gx, gy, "psf_empty"))
    if not placed:
        return processed.data, processed.variance
    x, y, gx, gy = (np.array([p[k] for p in placed]) for k in range(4))
    kinds = [p[4] for p in placed]
    # Fluxes for an ideal difference S/N, as inject_fakes does.
    ref = reference.prepared
    ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
    var_new = processed.variance[np.round(y).astype(int), np.round(x).astype(int)]
    var_ref = ref.variance[iy, ix]
    ratio = 10 ** (0.4 * (ref.zero_point - processed.zero_point.zero_point))
    unit = difference_snr(np.ones_like(x), exposure.psf, ref.psf, var_new, var_ref, ratio)
    target_snr = _log_uniform(rng, *config.snr_range, len(x))
    flux = target_snr / unit
    injected = inject_point_sources(
        processed.data, exposure.psf, x, y, flux, gain=processed.gain, rng=rng
    )
    zp = processed.zero_point.zero_point
    for k in range(len(x)):
        targets.add(
            kinds[k],
            gx[k],
            gy[k],
            radius=config.match_radius,
            sign=1,
            mag=float(zp - 2.5 * math.log10(flux[k])),
            snr=float(target_snr[k]),
            delta_flux=float(flux[k]),
        )
    variance = processed.variance + (injected.model / processed.gain).astype(np.float32)
    return injected.image, variance


def _pick_stars(
    rng: np.random.Generator,
    n: int,
    layout: _Layout,
    catalog: dict[str, np.ndarray],
    config: InjectionConfig,
) -> list[tuple[float, float, float, float, float]]:
    """Isolated, unsaturated, non-variable catalogue stars: (x, y, gx, gy, mag)."""
    lo, hi = config.star_mag_range
    mag = catalog["mag"]
    pool = np.flatnonzero(~catalog["galaxy"] & ~catalog["variable"] & (mag >= lo) & (mag <= hi))
    visible = np.flatnonzero(mag < 22.5)
    tree = cKDTree(np.column_stack([catalog["x"][visible], catalog["y"][visible]]))
    # Brighter stars first, loosely: faint ones leave residuals below the threshold.
    order = pool[np.argsort(mag[pool] + rng.normal(0.0, 1.0, pool.size))]
    out = []
    for i in order:
        if len(out) == n:
            break
        x, y = catalog["x"][i], catalog["y"][i]
        if len(tree.query_ball_point([x, y], 8.0)) > 1 or not layout.usable(x, y, 6.0)[0]:
            continue
        gx, gy = layout.to_grid(np.array([x]), np.array([y]))
        if not layout.clear(gx, gy)[0]:
            continue
        out.append((x, y, float(gx[0]), float(gy[0]), float(mag[i])))
        layout.targets.add("_reserved", float(gx[0]), float(gy[0]), radius=0.0)
    return out


def _segment_points(x0: float, y0: float, x1: float, y1: float, step: float = 2.0):
    n = max(int(math.hypot(x1 - x0, y1 - y0) / step), 1) + 1
    t = np.linspace(0.0, 1.0, n)
    return x0 + t * (x1 - x0), y0 + t * (y1 - y0)


def _draw_segments(
    rng: np.random.Generator,
    n: int,
    layout: _Layout,
    lengths: tuple[float, float],
    vertical: bool = False,
) -> list[tuple[float, float, float, float, float, float, float, float]]:
    """Up to ``n`` segments in exposure pixels whose every point is usable and
    clear of every target; returns exposure and grid end points."""
    ey, ex = layout.exposure_mask.shape
    m = layout.config.margin
    out = []
    for _ in range(max(50 * n, 200)):
        if len(out) == n:
            break
        length = rng.uniform(*lengths)
        angle = 0.5 * math.pi if vertical else rng.uniform(0, math.pi)
        x, y = rng.uniform(m, ex - 1 - m), rng.uniform(m, ey - 1 - m)
        if vertical:
            x = float(round(x))
        dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
        px, py = _segment_points(x - dx, y - dy, x + dx, y + dy)
        if not layout.usable(px, py, reach=1.0).all():
            continue
        gx, gy = layout.to_grid(px, py)
        if not layout.clear(gx, gy).all():
            continue
        out.append((x - dx, y - dy, x + dx, y + dy, gx[0], gy[0], gx[-1], gy[-1]))
        layout.targets.add("_reserved", gx[0], gy[0], gx[-1], gy[-1], radius=0.0)
    return out


def _inject_lines(
    rng: np.random.Generator,
    n_kind: int,
    processed: ProcessedExposure,
    layout: _Layout,
    fwhm: float,
    config: InjectionConfig,
) -> np.ndarray:
    """Column segments with an offset and satellite-like streaks; the image to add."""
    extra = np.zeros(processed.data.shape)
    sigma = float(processed.background.global_rms)
    r = config.match_radius
    for x0, y0, _, y1, g0x, g0y, g1x, g1y in _draw_segments(
        rng, n_kind, layout, (15.0, 80.0), vertical=True
    ):
        ix = int(x0)
        ya, yb = int(math.ceil(min(y0, y1))), int(math.floor(max(y0, y1)))
        extra[ya : yb + 1, ix] += rng.uniform(3.0, 20.0) * sigma * rng.choice([-1.0, 1.0])
        layout.targets.add("bad_column", g0x, g0y, g1x, g1y, radius=r)
    width = fwhm / 2.3548
    for x0, y0, x1, y1, g0x, g0y, g1x, g1y in _draw_segments(rng, n_kind, layout, (50.0, 200.0)):
        _add_line(extra, x0, y0, x1, y1, rng.uniform(0.7, 4.0) * sigma, width)
        layout.targets.add("streak", g0x, g0y, g1x, g1y, radius=r + fwhm)
    return extra


def _inject_star_artefacts(
    rng: np.random.Generator,
    n_kind: int,
    exposure: SimulatedExposure,
    layout: _Layout,
    catalog: dict[str, np.ndarray],
    fwhm: float,
    config: InjectionConfig,
) -> np.ndarray:
    """Moved, scaled and narrowed stars; the image to add."""
    targets = layout.targets
    shape = layout.exposure_mask.shape
    psf = exposure.psf
    cond = exposure.conditions
    zp = cond.zero_point
    r = config.match_radius
    stars = _pick_stars(rng, 3 * n_kind, layout, catalog, config)
    per = len(stars) // 3
    dipoles, scaled, ringed = stars[:per], stars[per : 2 * per], stars[2 * per : 3 * per]
    # A moved star: its PSF taken away here and put back 0.5 to 1.5 px off.
    xs, ys, fluxes = [], [], []
    for x, y, gx, gy, mag in dipoles:
        flux = 10 ** (-0.4 * (mag - zp))
        shift, angle = rng.uniform(*config.dipole_shift), rng.uniform(0, 2 * math.pi)
        xs += [x + shift * math.cos(angle), x]
        ys += [y + shift * math.sin(angle), y]
        fluxes += [flux, -flux]
        targets.add("dipole", gx, gy, radius=r + fwhm + shift / 2)
    # A star scaled by a few per cent, as a wrong flux ratio leaves it.
    for x, y, gx, gy, mag in scaled:
        xs.append(x)
        ys.append(y)
        error = rng.uniform(*config.scale_error) * rng.choice([-1.0, 1.0])
        fluxes.append(error * 10 ** (-0.4 * (mag - zp)))
        targets.add("star_residual", gx, gy, radius=r + fwhm)
    extra = _psf_model(shape, psf, xs, ys, fluxes)
    # A star whose profile is narrower than the PSF: a positive core in a
    # negative ring, the residual of a PSF mismatch.
    ring_flux = []
    for x, y, gx, gy, mag in ringed:
        ring_flux.append(10 ** (-0.4 * (mag - zp)) * rng.uniform(0.7, 1.0))
        narrow = moffat_psf(
            cond.fwhm * rng.uniform(*config.ring_width),
            beta=cond.beta,
            ellipticity=cond.ellipticity,
            theta=cond.theta,
            size=psf.shape[0],
        )
        extra += _psf_model(shape, narrow, [x], [y], [ring_flux[-1]])
        targets.add("psf_ring", gx, gy, radius=r + 1.5 * fwhm)
    extra -= _psf_model(shape, psf, [s[0] for s in ringed], [s[1] for s in ringed], ring_flux)
    return extra


def _inject_pixel_artefacts(
    rng: np.random.Generator,
    n_kind: int,
    processed: ProcessedExposure,
    layout: _Layout,
    config: InjectionConfig,
) -> np.ndarray:
    """Cosmic-ray hits and tracks and hot pixels; the image to add."""
    shape = processed.data.shape
    extra = np.zeros(shape)
    sigma = float(processed.background.global_rms)
    r = config.match_radius
    for x, y, gx, gy in layout.draw(rng, n_kind):
        ix, iy = int(round(x)), int(round(y))
        peak = _log_uniform(rng, 10.0 * sigma, 300.0 * sigma)
        if rng.uniform() < 0.6:
            extra[iy, ix] += peak
            for _ in range(int(rng.integers(0, 3))):
                ox, oy = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(rng.integers(4))]
                extra[iy + oy, ix + ox] += peak * rng.uniform(0.1, 0.5)
            layout.targets.add("cosmic_ray", gx, gy, radius=r)
        else:
            length, angle = rng.uniform(4.0, 14.0), rng.uniform(0, 2 * math.pi)
            t = np.arange(0.0, length, 0.25)
            px = np.rint(x + t * math.cos(angle)).astype(int)
            py = np.rint(y + t * math.sin(angle)).astype(int)
            pix = np.unique(py * shape[1] + px)
            extra.flat[pix] += peak / 4 * rng.uniform(0.5, 1.5, pix.size)
            ex, ey = x + length * math.cos(angle), y + length * math.sin(angle)
            gex, gey = layout.to_grid(np.array([ex]), np.array([ey]))
            layout.targets.add("cosmic_ray", gx, gy, float(gex[0]), float(gey[0]), radius=r)
    for x, y, gx, gy in layout.draw(rng, n_kind):
        extra[int(round(y)), int(round(x))] += _log_uniform(rng, 10.0 * sigma, 500.0 * sigma)
        layout.targets.add("hot_pixel", gx, gy, radius=r)
    return extra


def _draw_anomalies(
    rng: np.random.Generator,
    n_kind: int,
    result: Any,
    targets: _Targets,
    fwhm: float,
    config: InjectionConfig,
) -> None:
    """Spots and lines drawn on D, with the score they give, in place on ``result``."""
    shape = result.difference.shape
    noise = float(result.difference_noise)
    anomaly = np.zeros(shape)
    psf_sigma = fwhm / 2.3548
    ny, nx = shape
    r = config.match_radius

    near_mask = ndimage.binary_dilation(result.mask, iterations=3)

    def free(x0: float, y0: float, x1: float, y1: float) -> bool:
        px, py = _segment_points(x0, y0, x1, y1)
        m = config.margin
        if not np.all((px >= m) & (px <= nx - 1 - m) & (py >= m) & (py <= ny - 1 - m)):
            return False
        ix, iy = np.round(px).astype(int), np.round(py).astype(int)
        return not near_mask[iy, ix].any() and bool(targets.is_free(px, py).all())

    def place(n: int, lengths: tuple[float, float]) -> list[tuple[float, float, float, float]]:
        out: list[tuple[float, float, float, float]] = []
        for _ in range(max(50 * n, 200)):
            if len(out) == n:
                break
            length, angle = rng.uniform(*lengths), rng.uniform(0, math.pi)
            x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
            dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
            if free(x - dx, y - dy, x + dx, y + dy):
                out.append((x - dx, y - dy, x + dx, y + dy))
                targets.add("_reserved", x - dx, y - dy, x + dx, y + dy, radius=0.0)
        return out

    for kind, sign in (("anomaly_bright", 1.0), ("anomaly_dark", -1.0)):
        for x, y, _, _ in place(n_kind, (0.0, 0.0)):
            # Never PSF-like: much sharper or much broader than the PSF.
            scale = rng.uniform(0.25, 0.5) if rng.uniform() < 0.5 else rng.uniform(2.0, 4.0)
            major = scale * psf_sigma
            minor = major * rng.uniform(0.4, 1.0)
            peak = sign * _log_uniform(rng, 5.0, 60.0) * noise
            _add_spot(anomaly, x, y, peak, major, minor, rng.uniform(0, math.pi))
            targets.add(kind, x, y, radius=r + 2.0 * major)
    for x0, y0, x1, y1 in place(n_kind, (30.0, 150.0)):
        width = rng.uniform(0.5, 2.0) * psf_sigma
        peak = rng.uniform(1.0, 6.0) * noise * rng.choice([-1.0, 1.0])
        _add_line(anomaly, x0, y0, x1, y1, peak, width)
        targets.add("anomaly_streak", x0, y0, x1, y1, radius=r + 2.0 * width)

    # The matched filter of white noise of D: unit variance, as the score has
    # away from sources, and the same normalisation the pipeline applied.
    psf = np.asarray(result.difference_psf, float)
    psf = psf / psf.sum()
    scale = float(result.details.get("score_scale", 1.0))
    score = fftconvolve(anomaly, psf[::-1, ::-1], mode="same") / (noise * np.sqrt(np.sum(psf**2)))
    anomaly[result.mask] = 0.0
    score[result.mask] = 0.0
    result.difference = (result.difference + anomaly).astype(result.difference.dtype)
    result.score = (result.score + score / scale).astype(result.score.dtype)


def _label(
    candidates: Any,
    targets: _Targets,
    bright_xy: np.ndarray,
    fwhm: float,
    config: InjectionConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kind, label, true magnitude and injected S/N per detection; keep mask.

    ``candidates`` must be ordered strongest first, as detection orders them.
    """
    n = len(candidates)
    x, y = np.asarray(candidates["x"], float), np.asarray(candidates["y"], float)
    sign = np.asarray(candidates["sign"], int)
    kinds = np.full(n, "detection_false", dtype=object)
    labels = np.zeros(n, dtype=np.int8)
    mags = np.full(n, np.nan)
    snrs = np.full(n, np.nan)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return kinds, labels, mags, snrs, keep
    if len(targets):
        dist = targets.distance(x, y)
        radius = np.asarray(targets.radius)[None, :]
        hit = dist <= radius
        near = dist <= radius + fwhm
        t_label = np.asarray(targets.label)
        t_sign = np.asarray(targets.sign)
        t_unique = np.asarray(targets.unique)
        nearest_detection = np.argmin(dist, axis=0)
        seg = targets.segments()
        is_line = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]) > 0
        taken = np.zeros(len(targets), dtype=int)
    for i in range(n):
        if len(targets) == 0 or not near[i].any():
            if len(bright_xy) and np.min(np.hypot(*(bright_xy - [x[i], y[i]]).T)) <= (
                config.bright_star_radius * fwhm
            ):
                kinds[i] = "star_residual"
            continue
        close = np.flatnonzero(near[i])
        if len(set(t_label[close])) > 1 or not hit[i].any():
            keep[i] = False
            continue
        hits = np.flatnonzero(hit[i])
        j = hits[np.argmin(dist[i, hits])]
        if t_label[j] == 1 and (
            (t_sign[j] and t_sign[j] != sign[i]) or (t_unique[j] and nearest_detection[j] != i)
        ):
            keep[i] = False
            continue
        if is_line[j]:
            # Detections come strongest first: the first few of a line stay.
            taken[j] += 1
            if taken[j] > config.max_per_line:
                keep[i] = False
                continue
        kinds[i] = targets.kind[j]
        labels[i] = t_label[j]
        mags[i] = targets.mag[j]
        snrs[i] = targets.snr[j]
    return kinds, labels, mags, snrs, keep


def _real_map(
    shape: tuple[int, int],
    targets: _Targets,
    fwhm: float,
    mask: np.ndarray,
    visible: np.ndarray,
) -> np.ndarray:
    """1 within one FWHM of every visible real target, 0 elsewhere."""
    out = np.zeros(shape, np.float32)
    seg = targets.segments()
    real = np.flatnonzero((np.asarray(targets.label) == 1) & visible)
    reach = int(math.ceil(fwhm))
    grid = np.arange(-reach, reach + 1)
    disk = grid[:, None] ** 2 + grid[None, :] ** 2 <= fwhm * fwhm
    ny, nx = shape
    for j in real:
        ix, iy = int(round(seg[j, 0])), int(round(seg[j, 1]))
        ya, yb, xa, xb = iy - reach, iy + reach + 1, ix - reach, ix + reach + 1
        if ya < 0 or xa < 0 or yb > ny or xb > nx:
            continue
        out[ya:yb, xa:xb][disk] = 1.0
    out[mask] = 0.0
    return out


def _patches(
    rng: np.random.Generator,
    image: np.ndarray,
    target: np.ndarray,
    real_xy: np.ndarray,
    n: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` square patches: half around real sources, half anywhere."""
    _, ny, nx = image.shape
    corners = []
    for k in range(n):
        if k % 2 == 0 and len(real_xy):
            cx, cy = real_xy[int(rng.integers(len(real_xy)))]
            cx += rng.uniform(-size / 4, size / 4)
            cy += rng.uniform(-size / 4, size / 4)
            x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
        else:
            x0, y0 = int(rng.integers(0, nx - size + 1)), int(rng.integers(0, ny - size + 1))
        corners.append((min(max(x0, 0), nx - size), min(max(y0, 0), ny - size)))
    inputs = np.stack([image[:, y0 : y0 + size, x0 : x0 + size] for x0, y0 in corners])
    targets = np.stack([target[None, y0 : y0 + size, x0 : x0 + size] for x0, y0 in corners])
    return inputs.astype(np.float32), targets.astype(np.float32)


def _one_image(
    config: SurveyConfig,
    field_name: str,
    night: str,
    split: str,
    reference: FieldReference,
    masters: CalibrationMasters,
    *,
    real_per_image: int,
    artefacts_per_kind: int,
    patch_size: int,
    patches_per_image: int,
    rng: np.random.Generator,
    diff_config: DiffConfig,
    injection: InjectionConfig,
) -> _ImageRows | None:
    exposure, processed = _process(config, night, field_name, masters)
    if processed.zero_point is None:
        return None
    grid_wcs = field_wcs(config, field_name)
    ref = reference.prepared
    fwhm = float(exposure.conditions.fwhm)
    targets = _Targets(blocked=np.zeros(ref.mask.shape, bool), separation=injection.min_separation)
    layout = _Layout(exposure.wcs, grid_wcs, processed.mask, ref.mask, targets, injection)
    _natural_targets(targets, exposure, layout, grid_wcs, fwhm, injection)
    catalog = _catalog_on_exposure(config, field_name, exposure)

    # The scarce places first (isolated stars, galaxies), then the long
    # lines that need clear paths, then what can go anywhere.
    extra = _inject_star_artefacts(
        rng, artefacts_per_kind, exposure, layout, catalog, fwhm, injection
    )
    n_galaxy = int(round(injection.galaxy_fraction * real_per_image))
    on_galaxies = _place_on_galaxies(rng, n_galaxy, layout, catalog, fwhm, injection)
    extra += _inject_lines(rng, artefacts_per_kind, processed, layout, fwhm, injection)
    data, variance = _inject_real(
        rng,
        real_per_image,
        on_galaxies,
        processed,
        exposure,
        reference,
        layout,
        catalog,
        fwhm,
        injection,
    )
    extra += _inject_pixel_artefacts(rng, artefacts_per_kind, processed, layout, injection)
    data = (data + extra).astype(np.float32)
    science = replace(processed, data=data, variance=variance).prepared()
    subtraction = subtract_pair(science, ref, diff_config)
    result = subtraction.result
    diff_fwhm = psf_equivalent_fwhm(result.difference_psf)
    _draw_anomalies(rng, artefacts_per_kind, result, targets, diff_fwhm, injection)
    targets = _drop_reserved(targets)

    candidates = detect_unvetted(subtraction, science, ref, diff_config)
    # Vetting adds traced streaks to the result's mask: give it a copy.
    vetted_table, _, _ = find_candidates(
        Subtraction(replace(result), subtraction.science, subtraction.registration),
        science,
        ref,
        diff_config,
    )
    kept = {
        (int(a), int(b), int(s))
        for a, b, s in zip(
            vetted_table["x_peak"], vetted_table["y_peak"], vetted_table["sign"], strict=True
        )
    }
    vetted = np.array(
        [
            (int(a), int(b), int(s)) in kept
            for a, b, s in zip(
                candidates["x_peak"], candidates["y_peak"], candidates["sign"], strict=True
            )
        ],
        dtype=bool,
    )

    bright = catalog["mag"] < injection.bright_star_mag
    bgx, bgy = layout.to_grid(catalog["x"][bright], catalog["y"][bright])
    kinds, labels, mags, snrs, keep = _label(
        candidates, targets, np.column_stack([bgx, bgy]), diff_fwhm, injection
    )
    rows = np.flatnonzero(keep)
    table = candidates[rows]
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    triplets = cutout_triplets(
        subtraction.science, ref.data, result.difference, x, y, size=STAMP_SIZE
    )
    features = np.column_stack(
        [np.asarray(table[c], dtype=np.float64) for c in FEATURE_COLUMNS]
    ).reshape(len(rows), len(FEATURE_COLUMNS))
    image = unet_input_image(
        result.difference, result.score, float(result.difference_noise), result.mask, injection.clip
    )
    score_stamps = np.stack(
        [cutout_stamps(image[c], x, y, size=STAMP_SIZE, fill=0.0) for c in range(2)], axis=1
    ).reshape(len(rows), 2, STAMP_SIZE, STAMP_SIZE)
    n = len(rows)
    meta = pl.DataFrame(
        {
            "label": pl.Series(labels[rows], dtype=pl.Int8),
            "kind": pl.Series(kinds[rows].astype(str), dtype=pl.Utf8),
            "field": pl.Series([field_name] * n, dtype=pl.Utf8),
            "night": pl.Series([night] * n, dtype=pl.Utf8),
            "split": pl.Series([split] * n, dtype=pl.Utf8),
            "x": pl.Series(x, dtype=pl.Float64),
            "y": pl.Series(y, dtype=pl.Float64),
            "positive": pl.Series(np.asarray(table["sign"]) > 0, dtype=pl.Boolean),
            "snr": pl.Series(np.asarray(table["snr"], float), dtype=pl.Float64),
            "mag": pl.Series(mags[rows], dtype=pl.Float64, nan_to_null=True),
            "snr_injected": pl.Series(snrs[rows], dtype=pl.Float64, nan_to_null=True),
            "vetted": pl.Series(vetted[rows], dtype=pl.Boolean),
        }
    )

    visible = _visible(targets, exposure, processed, reference, result.mask)
    real_map = _real_map(result.difference.shape, targets, diff_fwhm, result.mask, visible)
    seg = targets.segments()
    real_xy = seg[(np.asarray(targets.label, int) == 1) & visible, :2]
    patches, patch_targets = _patches(rng, image, real_map, real_xy, patches_per_image, patch_size)
    return _ImageRows(triplets, features, meta, score_stamps, patches, patch_targets)


def _visible(
    targets: _Targets,
    exposure: SimulatedExposure,
    processed: ProcessedExposure,
    reference: FieldReference,
    mask: np.ndarray,
) -> np.ndarray:
    """Which targets an ideal subtraction shows at S/N >= 3 on valid pixels.

    Injected point sources were given their S/N; for simulated transients it
    is their flux change since a typical reference times the S/N per unit
    flux there (sky-limited).
    """
    seg = targets.segments()
    ny, nx = mask.shape
    ix = np.clip(np.round(seg[:, 0]).astype(int), 0, nx - 1)
    iy = np.clip(np.round(seg[:, 1]).astype(int), 0, ny - 1)
    visible = ~mask[iy, ix]
    snr = np.asarray(targets.snr, float)
    truth = np.isnan(snr) & (np.asarray(targets.label) == 1)
    if truth.any():
        ref = reference.prepared
        zp = processed.zero_point.zero_point
        n = int(truth.sum())
        unit = difference_snr(
            np.ones(n),
            exposure.psf,
            ref.psf,
            np.full(n, float(processed.background.global_rms) ** 2),
            ref.variance[iy[truth], ix[truth]],
            10 ** (0.4 * (ref.zero_point - zp)),
        )
        snr[truth] = np.abs(np.asarray(targets.delta_flux, float)[truth]) * unit
    return visible & (np.nan_to_num(snr) >= 3.0)


# --------------------------------------------------------------------------
# The whole set


def _split_of(
    field_name: str,
    night: str,
    test_fields: set[str],
    test_nights: set[str],
    validation_nights: set[str],
) -> str:
    if field_name in test_fields or night in test_nights:
        return "test"
    if night in validation_nights:
        return "validation"
    return "train"


def _nights_before(first: str, n: int) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start - dt.timedelta(days=k)).isoformat() for k in range(n, 0, -1)]


def _empty_training_set() -> TrainingSet:
    schema = {
        "label": pl.Int8,
        "kind": pl.Utf8,
        "field": pl.Utf8,
        "night": pl.Utf8,
        "split": pl.Utf8,
        "x": pl.Float64,
        "y": pl.Float64,
        "positive": pl.Boolean,
        "snr": pl.Float64,
        "mag": pl.Float64,
        "snr_injected": pl.Float64,
        "vetted": pl.Boolean,
    }
    return TrainingSet(
        triplets=np.zeros((0, 3, STAMP_SIZE, STAMP_SIZE), np.float32),
        features=np.zeros((0, len(FEATURE_COLUMNS))),
        meta=pl.DataFrame(schema=schema),
        score_stamps=np.zeros((0, 2, STAMP_SIZE, STAMP_SIZE), np.float32),
    )


def build_training_set(
    config: SurveyConfig,
    *,
    fields: Sequence[str],
    nights: Sequence[str],
    test_fields: Sequence[str],
    test_nights: Sequence[str],
    validation_nights: Sequence[str],
    real_per_image: int = 60,
    artefacts_per_kind: int = 8,
    patch_size: int = 128,
    patches_per_image: int = 8,
    seed: int = 0,
    progress: Progress | None = None,
    reference_nights: Sequence[str] | None = None,
    references: Mapping[str, FieldReference] | None = None,
    diff_config: DiffConfig | None = None,
    injection: InjectionConfig | None = None,
) -> tuple[TrainingSet, UNetSet]:
    """Simulate, inject, subtract, detect and label every field x night.

    Parameters
    ----------
    config : SurveyConfig
        The simulated survey (its ``shape`` sets the image size).
    fields, nights : sequence of str
        Images used: every field on every night.
    test_fields, test_nights : sequence of str
        Images of these fields or on these nights are the ``test`` split.
    validation_nights : sequence of str
        Other images on these nights are ``validation``; the rest ``train``.
    real_per_image : int
        Real point sources injected per image (a third on galaxies).
    artefacts_per_kind : int
        Instances of each bogus kind injected per image (fewer of the kinds
        made from stars when the field has too few isolated ones).
    patch_size, patches_per_image : int
        U-Net patches cut from each image's difference.
    seed : int
        With the survey's own seed, fixes everything.
    progress : callable, optional
        Called with a line after each reference and each image.
    reference_nights : sequence of str, optional
        Template epochs of every field's reference; by default the three
        nights before the first of ``nights``. None may be among ``nights``.
    references : mapping of str to FieldReference, optional
        References already built, by field; the others are built here.
    diff_config : DiffConfig, optional
        The subtraction and detection settings (the pipeline's defaults).
    injection : InjectionConfig, optional

    Returns
    -------
    TrainingSet
        Labelled detections of every image.
    UNetSet
        Difference-image patches and their real-source maps.
    """
    report = progress or (lambda _: None)
    diff_config = diff_config or DiffConfig()
    injection = injection or InjectionConfig()
    fields, nights = list(fields), sorted(nights)
    if not fields or not nights:
        raise ValueError("fields and nights must not be empty")
    known = set(field_names(config))
    for name in fields:
        if name not in known:
            raise ValueError(f"unknown field {name!r}; the survey has {sorted(known)}")
    for night in nights:
        dt.date.fromisoformat(night)
    if len(set(fields)) != len(fields) or len(set(nights)) != len(nights):
        raise ValueError("fields and nights must not repeat")
    held_fields, held_nights, val_nights = (
        set(test_fields),
        set(test_nights),
        set(validation_nights),
    )
    if not held_fields <= set(fields):
        raise ValueError(f"test_fields {sorted(held_fields - set(fields))} are not among fields")
    if not (held_nights | val_nights) <= set(nights):
        raise ValueError("test_nights and validation_nights must be among nights")
    if held_nights & val_nights:
        raise ValueError(f"nights {sorted(held_nights & val_nights)} are both test and validation")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    size = min(config.shape)
    if not 16 <= patch_size <= size:
        raise ValueError(f"patch_size must be between 16 and the image side {size}")
    if real_per_image < 0 or artefacts_per_kind < 0 or patches_per_image < 0:
        raise ValueError("counts per image must be non-negative")
    ref_nights = list(reference_nights or _nights_before(nights[0], 3))
    if set(ref_nights) & set(nights):
        raise ValueError("reference_nights must not be among the nights of the training set")

    masters = _Masters(config, keep=max(len(ref_nights), 1))
    refs = dict(references or {})
    for name in fields:
        if name not in refs:
            epochs = [_process(config, night, name, masters(night))[1] for night in ref_nights]
            refs[name] = build_field_reference(
                epochs,
                field_wcs(config, name),
                config.shape,
                grid_stars_xy=grid_stars(config, name),
            )
            report(f"reference {name} from {len(epochs)} epochs")

    parts: list[_ImageRows] = []
    splits: list[str] = []
    total, done = len(fields) * len(nights), 0
    for night in nights:
        for name in fields:
            split = _split_of(name, night, held_fields, held_nights, val_nights)
            ordinal = dt.date.fromisoformat(night).toordinal()
            rng = np.random.default_rng(
                [seed, config.seed, field_names(config).index(name), ordinal]
            )
            rows = _one_image(
                config,
                name,
                night,
                split,
                refs[name],
                masters(night),
                real_per_image=real_per_image,
                artefacts_per_kind=artefacts_per_kind,
                patch_size=patch_size,
                patches_per_image=patches_per_image,
                rng=rng,
                diff_config=diff_config,
                injection=injection,
            )
            done += 1
            if rows is None:
                report(f"{name} {night}: skipped, no zero point ({done}/{total})")
                continue
            parts.append(rows)
            splits.append(split)
            real = int(rows.meta["label"].sum())
            report(
                f"{name} {night} ({split}): {rows.meta.height} detections, {real} real "
                f"({done}/{total})"
            )

    if not parts:
        training = _empty_training_set()
        patches = UNetSet(
            np.zeros((0, 2, patch_size, patch_size), np.float32),
            np.zeros((0, 1, patch_size, patch_size), np.float32),
            np.zeros(0, dtype=str),
        )
        return training, patches
    training = TrainingSet(
        triplets=np.concatenate([p.triplets for p in parts]),
        features=np.concatenate([p.features for p in parts]),
        meta=pl.concat([p.meta for p in parts]),
        score_stamps=np.concatenate([p.score_stamps for p in parts]),
    )
    patches = UNetSet(
        inputs=np.concatenate([p.patches for p in parts]),
        targets=np.concatenate([p.patch_targets for p in parts]),
        split=np.concatenate(
            [np.full(len(p.patches), s) for p, s in zip(parts, splits, strict=True)]
        ).astype(str),
    )
    return training, patches
