"""Shared fixtures. Nothing here downloads anything."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# paddle sets OMP_NUM_THREADS=1 when unset; tests run on the CI machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FIXTURE_SERIES = os.path.join(SHARED, "fixtures", "ge_head_ct_tilt")


@pytest.fixture(scope="session")
def fixture_series_dir():
    if not os.path.isdir(FIXTURE_SERIES):
        pytest.fail(f"real fixture series missing: {FIXTURE_SERIES} (shared/ must sit beside the checkout)")
    return FIXTURE_SERIES


def require_tool(name: str, package: str = None) -> str:
    """Path of the external program ``name``. Missing: the test FAILS when ``PPIHD_REQUIRE_TOOLS=1`` (CI, where
    .ci/run installs the program), otherwise it is skipped with the reason (a developer machine without it)."""
    import shutil

    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (apt-get install {package or name})"
    if os.environ.get("PPIHD_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; PPIHD_REQUIRE_TOOLS=1 says every external tool must be present", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def ppihd_log(caplog):
    """``caplog`` that also sees the ``ppihd`` logger (which does not propagate to the root logger)."""
    import logging

    logger = logging.getLogger("ppihd")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ppihd")
    yield caplog
    logger.removeHandler(caplog.handler)
