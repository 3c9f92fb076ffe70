"""idd_lib: a study of Inter-class Distance Distillation (IDD) for semantic segmentation."""
__version__ = "0.1.0"
