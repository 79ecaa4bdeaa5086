"""alignfactory: Ray pipelines that turn seed instructions into SFT and preference data."""

__version__ = "0.1.0"
