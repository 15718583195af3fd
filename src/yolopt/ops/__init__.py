"""Tensor operations every layer of yolopt may import: box formats, IoU, NMS, size rules.

Nothing here imports another yolopt package.
"""

from .boxes import box_iou, clip_boxes, scale_boxes, xywh2xyxy, xyxy2xywh
from .decode import decode_raw
from .nms import PREDICT_NMS, VAL_NMS, NMSOptions, greedy_nms, non_max_suppression
from .sizes import check_imgsz

__all__ = ["decode_raw", "box_iou", "clip_boxes", "scale_boxes", "xywh2xyxy", "xyxy2xywh", "greedy_nms", "non_max_suppression",
           "NMSOptions", "PREDICT_NMS", "VAL_NMS",
           "check_imgsz"]
