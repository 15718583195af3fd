"""Training engine: loss, data pipeline, optimiser/schedule, EMA, checkpoints and the loop.

    >>> from yolopt.engine import train
    >>> result = train(data="data.yaml", weights="yolov5n.pt", epochs=3, imgsz=640)
"""

from .loss import DEFAULT_HYP, YoloLoss, bbox_ciou, scaled_loss_hyp

__all__ = ["DEFAULT_HYP", "YoloLoss", "bbox_ciou", "scaled_loss_hyp", "train", "Trainer", "TrainConfig", "Callback"]


def __getattr__(name):  # the trainer imports heavier modules; load it on first use
    if name in ("train", "Trainer", "TrainConfig", "Callback"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
