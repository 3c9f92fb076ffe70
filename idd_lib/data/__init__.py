"""Datasets: the embedded synthetic benchmark, real-dataset layouts, loading and checks.

``IGNORE_INDEX`` is the label value of pixels that belong to no class, for every dataset and loss.
"""

IGNORE_INDEX = 255
