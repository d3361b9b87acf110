"""The ``astrid`` command.

Heavy imports (astropy, the science modules) happen inside the commands so
that ``astrid --help`` is instant.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click


@click.group()
@click.version_option(package_name="astrid-assets")
def main() -> None:
    """AstrID: find astronomical transients in survey images."""


@main.command()
@click.argument("science", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output FITS.")
@click.option("--method", type=click.Choice(["zogy", "classic"]), default="zogy", show_default=True)
@click.option("--threshold", type=float, default=5.0, show_default=True, help="Sigma on S_corr.")
@click.option(
    "--align",
    type=click.Choice(["auto", "wcs", "stars", "none"]),
    default="auto",
    show_default=True,
    help="How to put the science image on the reference grid.",
)
@click.option("--sci-hdu", default=None, help="HDU of the science image (default: first image).")
@click.option("--ref-hdu", default=None, help="HDU of the reference image (default: first image).")
@click.option("--show", default=15, show_default=True, help="Candidates to print.")
def diff(
    science: Path,
    reference: Path,
    out: Path,
    method: str,
    threshold: float,
    align: str,
    sci_hdu: str | None,
    ref_hdu: str | None,
    show: int,
) -> None:
    """Subtract REFERENCE from SCIENCE and detect transients.

    Writes D, SCORR, PSF and MASK image HDUs and a CANDIDATES table to OUT.
    GAIN, RDNOISE and SATURATE are taken from the headers when present; the
    PSF and the noise are measured from the images; the science image is
    aligned onto the reference grid by WCS when both have one.
    """
    from astrid_assets.commands.diff import run_diff_files

    started = time.perf_counter()
    try:
        summary = run_diff_files(
            science,
            reference,
            out,
            method=method,
            threshold=threshold,
            align=align,
            sci_hdu=_hdu(sci_hdu),
            ref_hdu=_hdu(ref_hdu),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - started
    click.echo(summary.describe(show=show))
    click.echo(f"wrote {out} in {elapsed:.2f} s")


def _hdu(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


@main.command()
@click.argument("query")
@click.option("--max-rows", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (every row) instead of a table.")
def sql(query: str, max_rows: int, as_csv: bool) -> None:
    """Run a DuckDB QUERY over every materialized partition.

    Views: exposures, frames, candidates (cutouts in candidates_cutouts),
    injections; other surveys' alerts in external_candidates and our scores
    of them in external_scores (astrid alerts ingest / score). For example:

    astrid sql "SELECT night, field, count(*) FROM candidates GROUP BY ALL"
    """
    from astrid_assets.commands.sql import query_catalog, render
    from astrid_assets.settings import configure_environment

    catalog = configure_environment().catalog
    click.echo(render(query_catalog(catalog, query), max_rows=max_rows, as_csv=as_csv))


@main.command()
@click.option("--start", required=True, help="First night, YYYY-MM-DD.")
@click.option("--end", required=True, help="Last night, YYYY-MM-DD (included).")
@click.option("--fields", default=None, help="Comma-separated fields, e.g. F01,F02 (default: all).")
@click.option("--rebuild-references", is_flag=True, help="Rebuild the fields' references as well.")
@click.option(
    "--no-wait", is_flag=True, help="Submit and return; a running daemon (make ui) executes it."
)
def backfill(
    start: str, end: str, fields: str | None, rebuild_references: bool, no_wait: bool
) -> None:
    """Process every night from START to END over the fields, as a Dagster backfill.

    Nights are added as partitions and the references of fields that have
    none are built first. Waits, with a progress bar, until the backfill
    has finished (starting a dagster-daemon when none is running); Ctrl-C
    stops waiting and leaves the backfill for the UI to resume.
    """
    from dagster import DagsterInstance

    from astrid_assets.commands.backfill import follow_backfill, parse_fields, submit
    from astrid_assets.partitions import nights_between
    from astrid_assets.resources import survey_source
    from astrid_assets.settings import configure_environment

    configure_environment()
    try:
        nights = nights_between(start, end)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--start' / '--end'") from err
    survey = survey_source()
    held = survey.nights()
    if held is not None:  # a folder or an archive: only the nights it has
        nights = [n for n in nights if n in set(held)]
        if not nights:
            raise click.BadParameter(
                f"the source has no night from {start} to {end}; its nights: "
                f"{', '.join(held) or 'none'}",
                param_hint="'--start' / '--end'",
            )
    try:
        chosen = parse_fields(fields, survey.fields())
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--fields'") from err
    with DagsterInstance.get() as instance:
        backfill_id = submit(instance, nights, chosen, rebuild_references=rebuild_references)
        if no_wait:
            click.echo("not waiting: the daemon of make ui (or dagster-daemon run) executes it")
            return
        progress = follow_backfill(instance, backfill_id)
    if not progress.succeeded:
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--night", default=None, help="Night to process (default: the survey's first).")
def demo(night: str | None) -> None:
    """Process one night of the survey through the asset graph and show it.

    Submits a Dagster backfill over the night x every field (with the
    fields' references when they have none), runs it with a dagster-daemon,
    then prints each field's seeing, depth and candidates, the night's
    completeness and its best candidates, read back from DuckDB. Running it
    again re-materializes the night: the tables are replaced, not appended to.
    """
    from dagster import DagsterInstance

    from astrid_assets.commands.backfill import follow_backfill, submit
    from astrid_assets.commands.demo import night_summary
    from astrid_assets.partitions import validate_night
    from astrid_assets.resources import survey_source
    from astrid_assets.settings import configure_environment

    configure_environment()
    survey = survey_source()
    try:
        night = validate_night(night or survey.first_night())
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--night'") from err
    with DagsterInstance.get() as instance:
        backfill_id = submit(instance, [night], None, title=f"demo {night}")
        progress = follow_backfill(instance, backfill_id, label=f"night {night}")
        if progress.materialized:
            import duckdb

            try:
                simulated = survey.nights() is None  # the simulator has truth
                click.echo(
                    night_summary(instance, night, simulated=simulated).describe(backfill_id)
                )
            except duckdb.Error as err:  # a table the failed steps did not write
                click.echo(f"no summary of night {night}: {err}", err=True)
    if not progress.succeeded:
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--secure-cookies", is_flag=True, help="Mark the session cookie Secure (served over HTTPS)."
)
def review(host: str, port: int, secure_cookies: bool) -> None:
    """Serve the vetting web app: label candidates real, bogus or unsure.

    Sign in with a user made by `astrid users add`. Listens on 127.0.0.1
    only, unless told otherwise; put it behind a TLS proxy (and give
    --secure-cookies) to serve it to others. Session cookies are signed with
    $ASTRID_REVIEW_SECRET, or a key kept in ASTRID_HOME/review-secret.
    """
    import uvicorn

    from astrid_assets.commands.review import environment_app

    try:
        app = environment_app(secure_cookies=secure_cookies)
    except ValueError as err:  # a prod setting is missing
        raise click.ClickException(str(err)) from err
    click.echo(f"AstrID review on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.group()
def users() -> None:
    """Users of the review app (`astrid review`), in the label store's database."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "vetter", "admin"]),
    default="vetter",
    show_default=True,
    help="viewer: looks only; vetter: labels; admin: also exports and manages users.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
def users_add(name: str, role: str, password_stdin: bool) -> None:
    """Create the user NAME; the password is asked for twice (or read from stdin)."""
    from astrid_assets.commands.review import environment_users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        environment_users().add(name, password, role)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"added {role} {name}")


@users.command("list")
def users_list() -> None:
    """Every user and their role."""
    from astrid_assets.commands.review import environment_users

    for person in environment_users().all():
        click.echo(f"{person['name']}\t{person['role']}\t{person['created_at']:%Y-%m-%d}")


@main.group()
def alerts() -> None:
    """Alert packets: ours out (export), ZTF's and Rubin's in (ingest, score)."""


@alerts.command("export")
@click.option("--night", required=True, help="Night, YYYY-MM-DD.")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory."
)
@click.option(
    "--min-score",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Least ensemble probability real of an alert.",
)
@click.option(
    "--unscored-ok",
    is_flag=True,
    help="Alert on every candidate of fields without scores instead of failing.",
)
def alerts_export(night: str, out: Path, min_score: float, unscored_ok: bool) -> None:
    """Write the packets of NIGHT to OUT, one <candid>.avro file each.

    Reads the night's candidates and scores, and the earlier nights'
    candidates, from the tables already materialized; associates them into
    objects and writes a packet for each candidate with an ensemble score of
    at least --min-score: what the `alerts` asset writes, in another folder.
    """
    from astrid_assets.alerts import AlertConfig, night_alerts, write_packets
    from astrid_assets.partitions import validate_night
    from astrid_assets.resources import default_resources, survey_source
    from astrid_assets.settings import configure_environment

    configure_environment()
    try:
        night = validate_night(night)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--night'") from err
    config = AlertConfig(min_ensemble=min_score, require_scores=not unscored_ok)
    started = time.perf_counter()
    try:
        store = default_resources()["parquet_io_manager"].create_io_manager(None)
        tables, built = night_alerts(store, night, survey_source().fields(), config)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    for field in tables.unscored_fields:
        click.echo(f"{field}: no scores, every candidate alerted", err=True)
    with click.progressbar(length=len(built.packets), label=f"night {night}") as bar:
        written = write_packets(built.packets, out, workers=config.workers, progress=bar.update)
    click.echo(
        f"wrote {len(written.paths)} packets to {out} in {time.perf_counter() - started:.1f} s: "
        f"{built.new_objects} new objects, {built.known_objects} known; "
        f"{built.below_cut} of {built.candidates} candidates below {min_score}"
    )


@alerts.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--kafka",
    "bootstrap",
    metavar="HOST:PORT",
    help="Consume alerts from this Kafka broker instead of reading PATHS.",
)
@click.option("--topic", help="The broker's topic of alert packets (with --kafka).")
@click.option(
    "--group",
    default=None,
    help="Consumer group; its committed offsets say where to start. [default: astrid-alerts]",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many messages (with --kafka). [default: until idle]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop when no message arrives for this many seconds (with --kafka). [default: 10]",
)
def alerts_ingest(
    paths: tuple[Path, ...],
    bootstrap: str | None,
    topic: str | None,
    group: str | None,
    max_messages: int | None,
    timeout: float | None,
) -> None:
    """Store the ZTF and Rubin alert packets of PATHS, or of a Kafka topic, in the
    external_candidates table.

    PATHS are Avro files, directories (every *.avro, *.tar, *.tar.gz below) or
    tarballs. With --kafka HOST:PORT --topic TOPIC instead, each message is
    one Avro packet file (as on ZTF's stream); the topic is read from the
    group's committed offsets (the earliest for a new group) until
    --max-messages or --timeout seconds without a message, and the offsets
    are committed once the alerts are stored. Credentials come from
    ASTRID_KAFKA_USERNAME, ASTRID_KAFKA_PASSWORD, ASTRID_KAFKA_SASL_MECHANISM,
    ASTRID_KAFKA_SECURITY_PROTOCOL and ASTRID_KAFKA_SSL_CA_LOCATION.

    One row per alert, the survey's own scores (rb, drb, reliability) and the
    cutouts kept; an alert already stored is skipped. A malformed file, packet
    or message is reported and skipped: the command exits 0 with a count of
    warnings, non-zero only when nothing could be read. Then:

    astrid sql "SELECT survey, count(*) FROM external_candidates GROUP BY ALL"
    """
    from astrid_assets.resources import default_resources
    from astrid_assets.settings import configure_environment

    kafka_only = {
        "--topic": topic,
        "--group": group,
        "--max-messages": max_messages,
        "--timeout": timeout,
    }
    if bootstrap is None:
        given = [name for name, value in kafka_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only go with --kafka HOST:PORT")
        if not paths:
            raise click.UsageError("give alert PATHS, or --kafka HOST:PORT --topic TOPIC")
    else:
        if paths:
            raise click.UsageError("give either alert PATHS or --kafka, not both")
        if not topic:
            raise click.UsageError("--kafka needs --topic TOPIC")

    configure_environment()
    started = time.perf_counter()
    problems: list[str] = []

    def warn(source: str, reason: str) -> None:
        problems.append(f"{source}: {reason}; skipped")

    if bootstrap is None:
        from astrid_assets.alerts.ingest import alert_inputs, ingest_alerts

        inputs = alert_inputs(paths)
        if not inputs:
            raise click.ClickException(
                f"no *.avro files or tarballs in {', '.join(map(str, paths))}"
            )
        store = default_resources()["parquet_io_manager"].create_io_manager(None)
        with click.progressbar(length=len(inputs), label="alerts", file=sys.stderr) as bar:
            result = ingest_alerts(store, inputs, on_error=warn, progress=bar.update)
        origin = f"{len(inputs)} inputs"
        consumed = None
    else:
        from astrid_assets.alerts.kafka import DEFAULT_GROUP, KafkaSource, ingest_kafka_alerts

        try:
            source = KafkaSource(
                bootstrap,
                topic,
                group=group or DEFAULT_GROUP,
                max_messages=max_messages,
                timeout=10.0 if timeout is None else timeout,
            )
        except ValueError as err:
            raise click.UsageError(str(err)) from err
        store = default_resources()["parquet_io_manager"].create_io_manager(None)

        def stored_batch(count: int) -> None:
            click.echo(f"{topic}: {count} messages stored", err=True)

        try:
            ingest = ingest_kafka_alerts(store, source, on_error=warn, progress=stored_batch)
        except (RuntimeError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        result = ingest.result
        consumed = ingest.messages
        origin = f"{consumed} messages of {topic} (group {source.group})"
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    for survey, read in result.read.items():
        click.echo(
            f"{survey}: {read} alerts read, {result.stored[survey]} stored, "
            f"{result.duplicates[survey]} already stored"
        )
    click.echo(
        f"{sum(result.stored.values())} alerts stored from {origin} in "
        f"{time.perf_counter() - started:.1f} s; {len(problems)} warnings"
    )
    if not result.read and consumed != 0:
        raise click.ClickException("no alert could be read")


@alerts.command("score")
@click.option(
    "--survey",
    type=click.Choice(["ztf", "rubin", "all"]),
    default="all",
    show_default=True,
    help="Whose stored alerts to score.",
)
def alerts_score(survey: str) -> None:
    """Score the stored external alerts with our real-bogus CNN, beside the surveys' own.

    Writes the external_scores table (join it to external_candidates on
    survey, candid) and prints the ROC AUC of our score against ZTF's
    drb > 0.5 and Rubin's reliability > 0.5. The CNN is our survey's champion
    applied without fine-tuning.
    """
    from astrid_assets.alerts.external_scoring import load_realbogus_champion, score_external
    from astrid_assets.alerts.ingest import SURVEYS
    from astrid_assets.resources import default_resources, mlflow_tracking
    from astrid_assets.settings import configure_environment

    configure_environment()
    surveys = SURVEYS if survey == "all" else (survey,)
    store = default_resources()["parquet_io_manager"].create_io_manager(None)
    try:
        model, version = load_realbogus_champion(mlflow_tracking())
    except LookupError as err:
        raise click.ClickException(
            f"{err}\nno real-bogus model to score with: train one first by materializing "
            "the model assets (training_set, realbogus_model; group ml in make ui)"
        ) from err
    started = time.perf_counter()
    evaluations = score_external(store, model, surveys, model_version=version)
    if not evaluations:
        raise click.ClickException(
            f"no {' or '.join(surveys)} alerts stored: run astrid alerts ingest PATH first"
        )
    for evaluation in evaluations:
        click.echo(evaluation.line())
    click.echo(f"scored with {version} in {time.perf_counter() - started:.1f} s")
