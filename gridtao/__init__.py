"""gridtao: a grid-responsive GPU power-capping agent."""

__version__ = "0.1.0"
