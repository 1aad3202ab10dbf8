"""Discovery on the 3+3 cluster: the instance registry and its leases, as edges use them."""

from tests.edge.conftest import edge, edge_settings, http  # noqa: F401  (the edge fixtures)
from tests.edge.test_upstreams import *  # noqa: F403  (the test bodies, run with the cluster fixtures)
