import pytest

from contrib.regtest_node import RegtestNode
from tests.node import NodeFactory


@pytest.fixture(scope="session")
def bitcoind(tmp_path_factory):
    """One regtest chain for the whole run (Bitcoin Core's bitcoind, else bcoin), as CLN's
    test framework shares one bitcoind between its nodes."""
    node = RegtestNode(str(tmp_path_factory.mktemp("bitcoind")))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def node_factory(tmp_path, bitcoind):
    factory = NodeFactory(tmp_path, bitcoind)
    yield factory
    factory.teardown()
