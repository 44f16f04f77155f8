# Makes configs/ importable as cnn_cli.configs (see pyproject.toml), so Hydra finds it
# with pkg://cnn_cli.configs from a checkout and from an installed wheel alike.
# The YAML files name typed schemas from Hydra's ConfigStore in their defaults lists:
# registering them here means whoever composes these configs has them.
from cnn_cli.schema import register

register()
