"""The review app's tables in production: labels' undo and counts, and users, on a real
PostgreSQL server started for the test."""

from contextlib import closing

import pytest

from astrid_assets.labels import LabelStore
from astrid_assets.review.users import UserStore
from astrid_assets_tests.servers import PostgresServer
from astrid_assets_tests.test_review.test_queue import exercise_undo_and_counts


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        server.create_database("astrid_review")
        yield server


def _store(server: PostgresServer) -> LabelStore:
    return LabelStore(
        pg_host=server.host,
        pg_port=server.port,
        pg_user=server.user,
        pg_password=server.password,
        pg_database="astrid_review",
    )


def test_undo_and_counts_on_postgres(postgres):
    store = _store(postgres)
    exercise_undo_and_counts(store)
    with closing(postgres.connect("astrid_review")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT vetter, label FROM labels")
        assert cursor.fetchall() == [("bob", "bogus")]


def test_users_on_postgres(postgres):
    users = UserStore(_store(postgres).engine())
    users.add("vera", "pa55-word", "vetter")
    with pytest.raises(ValueError, match="exists"):
        users.add("vera", "pa55-word", "admin")
    assert users.authenticate("vera", "pa55-word").role == "vetter"
    assert users.authenticate("vera", "wrong-word") is None
    with closing(postgres.connect("astrid_review")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name, role, password_hash FROM users")
        ((name, role, password_hash),) = cursor.fetchall()
    assert (name, role) == ("vera", "vetter") and password_hash.startswith("$argon2id$")
