"""Field references: the best template epochs, calibrated, aligned and coadded."""

import time

import numpy as np
from dagster import AssetExecutionContext, MetadataValue, Output, asset
from pydantic import Field

from astrid_assets.defs.calibration import FrameQualityConfig, calibrate, night_masters
from astrid_assets.defs.previews import difference_preview
from astrid_assets.partitions import field_partitions
from astrid_assets.science.processing import (
    FieldReference,
    build_field_reference,
)
from astrid_assets.science.quality import assess
from astrid_assets.science.reference import ReferenceConfig
from astrid_assets.sources import SurveySource

__all__ = ["ReferenceImageConfig", "reference_images"]


class ReferenceImageConfig(FrameQualityConfig):
    """How many of the template epochs go into the coadd, and the limits they must meet."""

    n_best: int = Field(default=3, ge=1, le=50, description="Epochs coadded, deepest first.")
    instrumental_zero_point: float = Field(
        default=25.0,
        description="Zero point given to template epochs that neither a catalogue nor their "
        "header calibrates; the field's magnitudes are then instrumental.",
    )


@asset(
    partitions_def=field_partitions,
    io_manager_key="fits_io_manager",
    group_name="reference",
    kinds={"fits"},
)
def reference_images(
    context: AssetExecutionContext, config: ReferenceImageConfig, survey: SurveySource
) -> Output[FieldReference]:
    """The field's deep reference on its own grid, with its PSF, variance and sources.

    Every template epoch the survey offers for the field is calibrated like a
    science frame; those within the quality limits are ranked by depth (the
    5σ point-source limit folds in seeing, sky and transparency) and the
    ``n_best`` deepest are aligned and coadded. Materialize it again to
    rebuild the reference, for instance after more template epochs arrived.
    """
    field = context.partition_key
    nights = survey.template_nights(field)
    if not nights:
        raise ValueError(f"field {field}: the survey offers no template epochs")
    started = time.perf_counter()
    epochs, rows = [], []
    limits = config.limits()
    # Without a catalogue, an epoch whose header states no zero point is put on
    # an instrumental scale; it is used only when no epoch is calibrated.
    uncatalogued = len(survey.catalog(field)) == 0
    instrumental: set[str] = set()
    for i, night in enumerate(nights, 1):
        context.log.info(f"{field}: template epoch {i}/{len(nights)} ({night})")
        masters = night_masters(survey.calibration_frames(night))
        raw = survey.exposure(night, field)
        fallback = None
        if uncatalogued and survey.stated_zero_point(raw) is None:
            fallback = config.instrumental_zero_point
            instrumental.add(night)
        processed = calibrate(raw, masters, survey, fallback_zero_point=fallback)
        reasons = assess(processed.quality, limits)
        if processed.zero_point is None:
            reasons.append("no zero point")
        rows.append((night, processed.quality.limiting_mag, processed.quality.fwhm_arcsec, reasons))
        if not reasons:
            epochs.append((processed.quality.limiting_mag, night, processed))
    if instrumental and any(night not in instrumental for _, night, _ in epochs):
        for night, _, _, reasons in rows:
            if night in instrumental and not reasons:
                reasons.append("no zero point (other epochs have one)")
        epochs = [e for e in epochs if e[1] not in instrumental]
    elif instrumental:
        context.log.warning(
            f"{field}: no catalogue and no zero point in the headers; the reference is on an "
            f"instrumental scale (zero point {config.instrumental_zero_point})"
        )
    if not epochs:
        detail = "; ".join(f"{n}: {', '.join(r)}" for n, _, _, r in rows)
        raise ValueError(f"field {field}: no template epoch within the quality limits ({detail})")
    epochs.sort(key=lambda e: -e[0])
    chosen = epochs[: config.n_best]
    wcs, shape = survey.grid(field)
    reference = build_field_reference(
        [e[2] for e in chosen],
        wcs,
        shape,
        grid_stars_xy=survey.grid_stars(field),
        config=ReferenceConfig(max_epochs=config.n_best),
    )
    for entry, (_, night, _) in zip(reference.registration, chosen, strict=True):
        entry["night"] = night
    used = {chosen[i][1] for i in reference.reference.epochs_used}
    table = '| night | depth (5σ mag) | seeing (") | used |\n|---|---|---|---|\n' + "\n".join(
        f"| {n} | {m:.2f} | {s:.2f} | {'yes' if n in used else ', '.join(r) or 'no'} |"
        for n, m, s, r in rows
    )
    prepared = reference.prepared
    return Output(
        reference,
        metadata={
            "epochs_offered": len(nights),
            "epochs_used": len(used),
            "nights_used": ", ".join(sorted(used)),
            "epochs": MetadataValue.md(table),
            "zero_point": round(float(prepared.zero_point or np.nan), 4),
            "zero_point_from": "instrumental"
            if used <= instrumental
            else ("catalogue" if not uncatalogued else "header"),
            "seeing_px": round(float(prepared.fwhm), 3),
            "sources": len(prepared.sources),
            "masked_fraction": round(float(prepared.mask.mean()), 5),
            "seconds": round(time.perf_counter() - started, 2),
            "preview": difference_preview(prepared.data, prepared.mask, title=f"reference {field}"),
        },
    )
