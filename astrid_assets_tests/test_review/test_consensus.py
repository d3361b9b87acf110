"""Against the running app: the consensus of disagreeing vetters, the queue of what I have
not labelled yet, and the admin's export as CSV and Parquet."""

import io

import polars as pl

from astrid_assets_tests.test_review.conftest import FIELDS, NIGHTS, SOURCES, signed_in

DISPUTED = f"{NIGHTS[2]}_{FIELDS[1]}_0005"
AGREED = f"{NIGHTS[2]}_{FIELDS[1]}_0006"


def _label(client, token, candidate, label, comment=""):
    body = {"candidate_id": candidate, "label": label, "comment": comment}
    response = client.post("/api/labels", json=body, headers={"X-CSRF-Token": token})
    assert response.status_code == 201, response.text
    return response.json()


def test_disagreeing_vetters_are_flagged_and_the_labels_export(server, survey):
    with (
        signed_in(server.url, "val") as (val, val_token),
        signed_in(server.url, "ada") as (
            ada,
            ada_token,
        ),
    ):
        _label(val, val_token, DISPUTED, "bogus")
        _label(val, val_token, DISPUTED, "real")  # a change of mind: one vote, the last
        _label(ada, ada_token, DISPUTED, "bogus", comment='a "dipole", surely')
        _label(val, val_token, AGREED, "real")
        counts = _label(ada, ada_token, AGREED, "real")["counts"]
        assert (counts["mine"], counts["real"], counts["bogus"]) == (2, 1, 1)

        rows = ada.get("/api/consensus", params={"night": NIGHTS[2]}).json()["candidates"]
        by_id = {r["candidate_id"]: r for r in rows}
        assert by_id[DISPUTED]["disagree"] and by_id[DISPUTED]["consensus"] == "tie"
        assert (by_id[DISPUTED]["n_real"], by_id[DISPUTED]["n_bogus"]) == (1, 1)
        assert by_id[DISPUTED]["votes"] == ["ada: bogus", "val: real"]
        assert not by_id[AGREED]["disagree"] and by_id[AGREED]["consensus"] == "real"
        only = ada.get("/api/consensus", params={"night": NIGHTS[2], "disagreements": "true"})
        assert [r["candidate_id"] for r in only.json()["candidates"]] == [DISPUTED]
        page = ada.get("/consensus", params={"night": NIGHTS[2]})
        assert page.status_code == 200 and 'class="flag">disagree' in page.text

        everything = pl.read_csv(io.BytesIO(ada.get("/export", params={"format": "csv"}).content))
        mine = everything.filter(pl.col("candidate_id").is_in([DISPUTED, AGREED]))
        assert mine.height == 5
        assert 'a "dipole", surely' in mine["comment"].to_list()
        latest = ada.get("/export", params={"format": "parquet", "latest": "true"})
        assert latest.headers["content-disposition"].endswith('.parquet"')
        latest = pl.read_parquet(io.BytesIO(latest.content))
        votes = latest.filter(candidate_id=DISPUTED).sort("vetter")
        assert votes.select("vetter", "label").rows() == [("ada", "bogus"), ("val", "real")]
        assert dict(latest.schema) == dict(survey.labels.all().schema)

        todo = val.get("/api/queue", params={"night": NIGHTS[2], "unlabelled": "true"})
        left = {r["candidate_id"] for r in todo.json()["candidates"]}
        assert len(left) == len(FIELDS) * SOURCES - 2 and not left & {DISPUTED, AGREED}
