"""Box operations, NMS, COCO mAP and the validation loop."""
