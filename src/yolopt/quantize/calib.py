"""Calibration images for post-training quantization: :mod:`yolopt.data.calib` (it lives in ``data`` so that the
exporters that quantize while exporting, LiteRT's, use the same loader), re-exported here."""

from ..data.calib import CALIB_IMAGES, MIN_SIDE, OPTIMIZE_CALIB_IMAGES, CalibrationError, CalibrationSet

__all__ = ["CALIB_IMAGES", "MIN_SIDE", "OPTIMIZE_CALIB_IMAGES", "CalibrationError", "CalibrationSet"]
