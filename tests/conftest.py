import pytest
from hypothesis import settings

from contrib.regtest_node import RegtestNode
from tests.node import NodeFactory


def pytest_addoption(parser):
    parser.addoption(
        "--stress",
        action="store_true",
        help="also run the long runs marked @pytest.mark.stress (make stress)",
    )


# Property tests: no per-example deadline (2 shared cores make timings noisy); `make stress`
# runs each at the long-run length issue 9 asks for.
settings.register_profile("default", deadline=None)
settings.register_profile("stress", deadline=None, max_examples=200_000)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "stress: a long run (fuzzing, load, crash matrix): only with --stress"
    )
    settings.load_profile("stress" if config.getoption("--stress") else "default")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--stress"):
        return
    skip = pytest.mark.skip(reason="long run: make stress")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


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
