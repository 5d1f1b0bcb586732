import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# Every gateway a test starts without --db would otherwise write to the user's
# real store (~/.local/share/manifold): point the default at a throwaway folder.
_DATA_HOME = tempfile.mkdtemp(prefix="manifold-test-data-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME


@pytest.fixture(scope="session", autouse=True)
def _throwaway_data_home() -> Iterator[None]:
    yield
    shutil.rmtree(_DATA_HOME, ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """One throwaway PostgreSQL cluster for the session (skips without PostgreSQL)."""
    from services import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh store URL: a SQLite file, then a new database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'sub' / 'manifold.db'}"
    return request.getfixturevalue("pg_cluster").create_database()
