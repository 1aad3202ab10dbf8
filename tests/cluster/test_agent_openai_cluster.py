"""Chat on the 3+3 cluster with a streaming model: resume after a dropped client, a cancel from another
connection, a turn running on one instance watched on another (the app opened on redis+cluster://)."""

from tests.servicers.test_agent_openai import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
