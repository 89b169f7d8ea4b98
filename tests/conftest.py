pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.operator", "tests.fixtures.s3", "tests.fixtures.artifacts",
                  "tests.fixtures.prometheus", "tests.fixtures.gitops"]


def pytest_collection_modifyitems(session, config, items):
    """Tests marked `last` read what the rest of the session did (the apiserver's audit log): run them last."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
