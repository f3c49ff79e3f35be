import os
from pathlib import Path

import pytest
import torch

# Keep the suite deterministic and light on the 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One torch thread for tiny problems (no OpenMP hand-offs on a busy 2-core machine); restored after."""
    from gridfield.threads import single_thread

    with single_thread():
        yield


def fast_path_missing(what: str) -> None:
    """Skip a fast-path test whose extension cannot be built, or fail it when ``GRIDFIELD_REQUIRE_FAST=1``
    (CI sets it: there a missing compiler or a broken build must turn the run red, not skip silently)."""
    if os.environ.get("GRIDFIELD_REQUIRE_FAST", "0") == "1":
        pytest.fail(f"{what} (GRIDFIELD_REQUIRE_FAST=1)")
    pytest.skip(what)


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    """Resumable training states of the suite's runs go to a temporary folder, not ~/.cache."""
    old = os.environ.get("GRIDFIELD_STATE_DIR")
    os.environ["GRIDFIELD_STATE_DIR"] = str(tmp_path_factory.mktemp("train-states"))
    yield
    if old is None:
        os.environ.pop("GRIDFIELD_STATE_DIR", None)
    else:
        os.environ["GRIDFIELD_STATE_DIR"] = old
