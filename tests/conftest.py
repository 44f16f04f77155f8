"""Shared pytest setup: the markers these tests use."""


def pytest_configure(config):
    config.addinivalue_line("markers", "wheel: builds and installs the wheel (about 10 s); deselect with -m 'not wheel'")
    config.addinivalue_line("markers", "cli: runs the cnn-summary console script in subprocesses (torch start-up each)")
