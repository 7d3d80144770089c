"""fgssl: self-supervised learning for fine-grained visual recognition."""

__version__ = "0.1.0"
