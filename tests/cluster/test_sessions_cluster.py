"""The sessions tests against the 3+3 cluster (the app opened on redis+cluster://)."""

from tests.test_sessions import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
