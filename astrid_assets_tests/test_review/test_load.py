"""Twenty vetters labelling at once for 30 s against the running app lose no label and
store none twice; undos under load remove exactly the row they report."""

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import polars as pl

from astrid_assets_tests.test_review.conftest import LOAD_CLIENTS, signed_in

SECONDS = 30.0
UNDO_EVERY = 10  # every tenth request of a client is an undo


def _vet(url: str, name: str, candidates: list[str], start: threading.Barrier, out: dict):
    """One vetter: label candidates in turn (each request with its own id in the comment)."""
    rng = random.Random(name)
    acknowledged, undone, failures = {}, [], []
    with signed_in(url, name) as (client, token):
        headers = {"X-CSRF-Token": token}
        start.wait()
        deadline = time.monotonic() + SECONDS
        sequence = 0
        while time.monotonic() < deadline:
            sequence += 1
            try:
                if sequence % UNDO_EVERY == 0:
                    response = client.post("/api/labels/undo", headers=headers)
                    if response.status_code == 200 and response.json()["undone"]:
                        undone.append(response.json()["undone"])
                    elif response.status_code != 200:
                        failures.append((sequence, response.status_code, response.text[:200]))
                    continue
                request_id = f"{name}-{sequence:05d}"
                label = rng.choice(["real", "bogus", "unsure"])
                candidate = candidates[(sequence + rng.randrange(7)) % len(candidates)]
                body = {"candidate_id": candidate, "label": label, "comment": request_id}
                response = client.post("/api/labels", json=body, headers=headers)
                if response.status_code == 201:
                    stored = response.json()["label"]
                    assert stored["comment"] == request_id and stored["vetter"] == name
                    acknowledged[request_id] = (candidate, label)
                else:
                    failures.append((sequence, response.status_code, response.text[:200]))
            except Exception as err:  # a transport error is a failure to report, not a crash
                failures.append((sequence, type(err).__name__, str(err)[:200]))
    out[name] = {"acknowledged": acknowledged, "undone": undone, "failures": failures}


def test_twenty_concurrent_vetters_lose_no_label_and_store_none_twice(server, survey):
    candidates = survey.candidates["candidate_id"].to_list()
    names = [f"load{k:02d}" for k in range(LOAD_CLIENTS)]
    start = threading.Barrier(LOAD_CLIENTS + 1)
    results: dict = {}
    threads = [
        threading.Thread(target=_vet, args=(server.url, name, candidates, start, results))
        for name in names
    ]
    for thread in threads:
        thread.start()
    start.wait(timeout=120)
    began = time.monotonic()
    for thread in threads:
        thread.join(timeout=SECONDS + 120)
    elapsed = time.monotonic() - began
    assert sorted(results) == names, "a client thread died"

    rows = survey.labels.all().filter(pl.col("vetter").str.starts_with("load"))
    stored = Counter(rows["comment"].to_list())
    twice = {c: n for c, n in stored.items() if n > 1}
    keys = Counter(zip(rows["vetter"], rows["candidate_id"], rows["created_at"], strict=True))
    acknowledged = {rid: v for r in results.values() for rid, v in r["acknowledged"].items()}
    undone = [u for r in results.values() for u in r["undone"]]
    undone_ids = Counter(u["comment"] for u in undone)
    lost = set(acknowledged) - set(stored) - set(undone_ids)
    failures = [f for r in results.values() for f in r["failures"]]
    figures = {
        "clients": LOAD_CLIENTS,
        "seconds": round(elapsed, 1),
        "labels_acknowledged": len(acknowledged),
        "labels_per_second": round(len(acknowledged) / elapsed, 1),
        "undos": len(undone),
        "rows_stored": rows.height,
        "duplicates": len(twice),
        "lost": len(lost),
        "failures": len(failures),
    }
    print("load test:", json.dumps(figures))
    folder = os.environ.get("ASTRID_TEST_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "review-load.json").write_text(json.dumps(figures, indent=2))

    assert failures == []
    assert len(acknowledged) > 20 * LOAD_CLIENTS  # every client got on with it
    assert twice == {} and max(keys.values()) == 1
    assert lost == set()
    assert max(undone_ids.values()) == 1  # no row was undone twice
    assert set(undone_ids) <= set(acknowledged)  # an undo removed an acknowledged label
    assert set(stored) == set(acknowledged) - set(undone_ids)  # and nothing else is there
    for row in rows.iter_rows(named=True):  # each label as its own vetter sent it
        assert row["comment"].startswith(row["vetter"] + "-")
        assert (row["candidate_id"], row["label"]) == acknowledged[row["comment"]]
    for u in undone:
        assert u["comment"].startswith(u["vetter"] + "-")
