"""Who may write, with which token, and what filter values can do: against the running app."""

import httpx
import pytest

from astrid_assets_tests.test_review.conftest import FIELDS, NIGHTS, SOURCES, signed_in

CANDIDATE = f"{NIGHTS[0]}_{FIELDS[0]}_0001"
LABEL = {"candidate_id": CANDIDATE, "label": "real"}


def _state(survey) -> dict:
    """What an attack must not change: the label and user rows, the views, the candidates."""
    return {
        "labels": survey.labels.all().to_dicts(),
        "users": survey.users().all(),
        "views": survey.catalog.views(),
        "candidates": survey.catalog.query("SELECT count(*) AS n FROM candidates")["n"][0],
    }


def test_a_write_without_sign_in_is_refused_with_401(server, survey):
    before = _state(survey)
    with httpx.Client(base_url=server.url) as anonymous:
        token = anonymous.get("/api/session").json()["csrf_token"]  # even with a token
        assert anonymous.post("/api/labels", json=LABEL).status_code == 401
        headers = {"X-CSRF-Token": token}
        assert anonymous.post("/api/labels", json=LABEL, headers=headers).status_code == 401
        form = {**LABEL, "csrf_token": token}
        assert anonymous.post("/api/labels", data=form).status_code == 401
        assert anonymous.post("/api/labels/undo", headers=headers).status_code == 401
        assert anonymous.post("/admin/users", data=form).status_code == 401
        assert anonymous.get("/api/queue").status_code == 401
        assert anonymous.get("/export").status_code == 401
        page = anonymous.get("/queue", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert _state(survey) == before


def test_a_write_the_role_does_not_allow_is_refused_with_403(server, survey):
    before = _state(survey)
    with signed_in(server.url, "vic") as (viewer, token):
        response = viewer.post("/api/labels", json=LABEL, headers={"X-CSRF-Token": token})
        assert response.status_code == 403 and "viewer" in response.json()["detail"]
        assert viewer.get("/api/queue").status_code == 200  # a viewer may look
    with signed_in(server.url, "val") as (vetter, token):
        assert vetter.get("/export", params={"format": "csv"}).status_code == 403
        assert vetter.get("/admin/users").status_code == 403
        new_user = {"name": "mallory", "password": "long enough", "role": "admin"}
        response = vetter.post("/admin/users", data={**new_user, "csrf_token": token})
        assert response.status_code == 403
    assert _state(survey) == before
    with signed_in(server.url, "ada") as (admin, token):
        export = admin.get("/export", params={"format": "csv"})
        assert export.status_code == 200 and export.text.startswith("id,candidate_id,night")


def test_a_forged_form_without_the_csrf_token_is_refused_with_403(server, survey):
    before = _state(survey)
    with signed_in(server.url, "val") as (vetter, token):
        assert vetter.post("/api/labels", data=LABEL).status_code == 403
        assert vetter.post("/api/labels", json=LABEL).status_code == 403
        wrong = {"X-CSRF-Token": token[:-2] + "xx"}
        assert vetter.post("/api/labels", json=LABEL, headers=wrong).status_code == 403
        assert vetter.post("/api/labels/undo").status_code == 403
        assert vetter.post("/logout").status_code == 403
        assert _state(survey) == before
        stored = vetter.post("/api/labels", data={**LABEL, "csrf_token": token})
        assert stored.status_code == 201  # the same form with the token is accepted
        undone = vetter.post("/api/labels/undo", headers={"X-CSRF-Token": token})
        assert undone.json()["undone"]["id"] == stored.json()["label"]["id"]
    with signed_in(server.url, "ada") as (admin, _):
        forged = {"name": "mallory", "password": "long enough", "role": "admin"}
        assert admin.post("/admin/users", data=forged).status_code == 403
    with httpx.Client(base_url=server.url) as client:  # a forged sign-in, too
        login = {"name": "ada", "password": "correct horse battery"}
        assert client.post("/login", data=login).status_code == 403
    assert _state(survey) == before


INJECTIONS = [
    {"night": "2026-01-06' OR '1'='1"},
    {"field": "F01; DROP TABLE labels;--"},
    {"field": "F01'; DROP VIEW candidates; --"},
    {"night": "x' UNION SELECT candidate_id FROM candidates --", "field": "F02"},
    {"night": NIGHTS[0], "field": "F01' OR 1=1 --"},
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_sql_injection_in_filters_changes_nothing(server, survey, attack):
    before = _state(survey)
    with signed_in(server.url, "val") as (vetter, _):
        response = vetter.get("/api/queue", params=attack)
        assert response.status_code == 200 and response.json()["candidates"] == []
        page = vetter.get("/queue", params=attack, headers={"Accept": "text/html"})
        assert page.status_code == 200 and "No candidates match" in page.text
        consensus = vetter.get("/api/consensus", params=attack)
        assert consensus.status_code == 200 and consensus.json()["candidates"] == []
        for bad in ("' OR 1=1 --", "x'; DROP TABLE users; --"):
            assert vetter.get(f"/api/candidates/{bad}").status_code == 404
        score = vetter.get("/api/queue", params={"min_score": "0 OR 1=1"})
        assert score.status_code == 422
        for start in (None, "' OR 1=1 --"):  # a start that is no candidate adds nothing
            everything = vetter.get("/api/queue", params={"start": start}).json()["candidates"]
            assert len(everything) == len(NIGHTS) * len(FIELDS) * SOURCES
    assert _state(survey) == before
