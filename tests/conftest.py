import pytest

from tests.node import NodeFactory


@pytest.fixture
def node_factory(tmp_path):
    factory = NodeFactory(tmp_path)
    yield factory
    factory.teardown()
