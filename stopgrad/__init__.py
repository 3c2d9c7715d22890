"""stopgrad: theory and experiment for self-supervised learning without negative pairs."""

__version__ = "0.1.0"
