"""Users of the review app: argon2 password hashes, the users table, `astrid users add`."""

import pytest
from click.testing import CliRunner

from astrid_assets.cli import main
from astrid_assets.labels import LabelStore
from astrid_assets.review.users import UserStore, hash_password, verify_password


def test_a_password_is_kept_only_as_a_salted_argon2id_hash():
    first, second = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert first.startswith("$argon2id$")
    assert "s3cret-pass" not in first
    assert first != second  # a fresh salt each time
    assert verify_password(first, "s3cret-pass") and verify_password(second, "s3cret-pass")
    assert not verify_password(first, "s3cret-pasS")
    assert not verify_password(first, "")
    assert not verify_password("not a hash", "s3cret-pass")


@pytest.fixture
def users(tmp_path) -> UserStore:
    return UserStore(LabelStore(sqlite_path=str(tmp_path / "labels.sqlite")).engine())


def test_users_sign_in_with_their_own_password_only(users):
    users.add("alice", "wonderland", "vetter")
    users.add("root", "administer", "admin")
    alice = users.authenticate("alice", "wonderland")
    assert alice is not None and alice.role == "vetter" and alice.can_label and not alice.is_admin
    assert users.authenticate("alice", "administer") is None
    assert users.authenticate("nobody", "wonderland") is None
    assert users.authenticate("root", "administer").is_admin
    assert [(u["name"], u["role"]) for u in users.all()] == [("alice", "vetter"), ("root", "admin")]


def test_a_user_is_refused_a_taken_name_a_short_password_or_an_unknown_role(users):
    users.add("alice", "wonderland")
    with pytest.raises(ValueError, match="exists"):
        users.add("alice", "another-one")
    with pytest.raises(ValueError, match="at least 8"):
        users.add("bob", "short")
    with pytest.raises(ValueError, match="role"):
        users.add("bob", "long enough", "superuser")
    with pytest.raises(ValueError, match="user name"):
        users.add("bob smith'; --", "long enough")
    assert [u["name"] for u in users.all()] == ["alice"]


def test_roles_and_passwords_can_change(users):
    users.add("alice", "wonderland", "viewer")
    assert not users.get("alice").can_label
    users.set_role("alice", "vetter")
    users.set_password("alice", "looking-glass")
    assert users.get("alice").can_label
    assert users.authenticate("alice", "wonderland") is None
    assert users.authenticate("alice", "looking-glass") is not None
    with pytest.raises(KeyError):
        users.set_role("nobody", "admin")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_ENV", "local")
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name in ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_MAX_RUNS"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return tmp_path


def _stored(home) -> UserStore:
    return UserStore(LabelStore(sqlite_path=str(home / "labels.sqlite")).engine())


def test_astrid_users_add_reads_the_password_from_stdin(home):
    result = CliRunner().invoke(
        main, ["users", "add", "vera", "--role", "vetter", "--password-stdin"], input="pa55-word\n"
    )
    assert result.exit_code == 0, result.output
    assert "added vetter vera" in result.output
    vera = _stored(home).authenticate("vera", "pa55-word")
    assert vera is not None and vera.role == "vetter"


def test_astrid_users_add_asks_for_the_password_twice(home):
    runner = CliRunner()
    result = runner.invoke(
        main, ["users", "add", "ada", "--role", "admin"], input="pa55-word\n" * 2
    )
    assert result.exit_code == 0, result.output
    assert _stored(home).authenticate("ada", "pa55-word").is_admin

    result = runner.invoke(main, ["users", "add", "bob"], input="pa55-word\nother-word\n")
    assert result.exit_code != 0  # the confirmation differed, and then the input ran out
    assert _stored(home).get("bob") is None

    result = runner.invoke(main, ["users", "add", "ada", "--password-stdin"], input="pa55-word\n")
    assert result.exit_code == 1 and "exists already" in result.output

    result = runner.invoke(main, ["users", "list"])
    assert result.exit_code == 0 and "ada\tadmin" in result.output
