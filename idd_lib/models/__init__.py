from .segmentor import Segmentor, build_segmentor, count_parameters

__all__ = ["Segmentor", "build_segmentor", "count_parameters"]
