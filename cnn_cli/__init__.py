"""cnn-cli: train convolutional networks declared as stacks of layers in YAML configs."""

__version__ = "0.1.0"
