pytest_plugins = ["tests.fixtures.cluster", "tests.fixtures.operator", "tests.fixtures.s3", "tests.fixtures.artifacts"]
