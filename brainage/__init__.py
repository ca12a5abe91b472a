"""brainage: multimodal brain-age prediction from MRI.

Importing the package has no side effects and imports nothing heavy; the
imaging, deep-learning and cluster libraries are imported inside the functions
that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
