"""Work leases on the 3+3 cluster: claims, renewal and the reaping of a dead instance's work."""

from tests.test_ownership import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
