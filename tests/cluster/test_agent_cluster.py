"""Chat on the 3+3 cluster: offline turns, Watch replay and live tail, history (the app opened on redis+cluster://)."""

from tests.servicers.test_agent import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
