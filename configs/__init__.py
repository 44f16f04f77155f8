# Makes configs/ importable as cnn_cli.configs (see pyproject.toml), so Hydra finds it
# with pkg://cnn_cli.configs from a checkout and from an installed wheel alike.
