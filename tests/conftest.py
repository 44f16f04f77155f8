"""Shared pytest setup: the markers and options these tests use."""


def pytest_configure(config):
    config.addinivalue_line("markers", "wheel: builds and installs the wheel (about 10 s); deselect with -m 'not wheel'")
    config.addinivalue_line("markers", "cli: runs the cnn-summary console script in subprocesses (torch start-up each)")


def pytest_addoption(parser):
    parser.addoption("--stacks", type=int, default=24,
                     help="how many random layer stacks tests/test_property.py trains (default 24)")
    parser.addoption("--stacks-seed", type=int, default=0, help="which random stacks (default 0)")
