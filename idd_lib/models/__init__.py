"""Segmentation networks (backbones + PSP/ASPP heads) and their ImageNet initialisation."""
from .pretrained import load_backbone_weights
from .segmentor import Segmentor, build_segmentor, count_parameters

__all__ = ["Segmentor", "build_segmentor", "count_parameters", "load_backbone_weights"]
