import os

import pytest

pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.operator", "tests.fixtures.s3", "tests.fixtures.artifacts",
                  "tests.fixtures.prometheus", "tests.fixtures.gitops"]

# hack/run-tests.sh sets it for the sessions against the cluster (integration, e2e, rbac): there a skip is
# what a broken cluster, audit policy or fixture looks like, so it fails unless the test is marked optional.
SKIPS_FAIL = "MODELLOOP_SKIPS_FAIL"


def pytest_configure(config):
    config.addinivalue_line("markers", "optional(reason): may be skipped even where skips fail (MODELLOOP_SKIPS_FAIL=1); "
                                       "the reason says when the skip is legitimate")


def pytest_collection_modifyitems(session, config, items):
    """Tests marked `last` read what the rest of the session did (the apiserver's audit log): run them last."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def _skips_fail() -> bool:
    return os.environ.get(SKIPS_FAIL) == "1"


def _skip_reason(report) -> str:
    """The message of a skip report (its longrepr is (path, line, "Skipped: <reason>"))."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


def _optional_reason(item) -> str | None:
    marker = item.get_closest_marker("optional")
    if marker is None:
        return None
    return marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Where skips fail, a skip of a test not marked `optional(reason=...)` is reported as a failure."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and _skips_fail() and not _optional_reason(item):
        report.outcome = "failed"
        report.longrepr = (f"skipped, and skips fail in this session: {_skip_reason(report)}\n"
                           f"(mark the test @pytest.mark.optional(reason=...) if this skip is legitimate)")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Where skips fail, a whole module skipped at import (pytest.skip(allow_module_level=True), importorskip)
    is a collection error: none of its tests can be marked optional."""
    report = yield
    if report.skipped and _skips_fail():
        report.outcome = "failed"
        report.longrepr = f"skipped, and skips fail in this session: {_skip_reason(report)}"
    return report
