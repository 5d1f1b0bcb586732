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
