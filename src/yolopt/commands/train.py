"""yolopt train: fine-tune or train a YOLOv5 detector (also under torchrun for DDP)."""

from __future__ import annotations

import logging

from ..errors import YoloptError
from ._options import imgsz_arg, nonneg_int_arg, positive_int_arg

log = logging.getLogger("yolopt")


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a detector on a YOLO-format dataset",
        description="Train like upstream YOLOv5 (same loss, augmentation, SGD schedule and EMA). Writes "
        "last.safetensors (a yolopt model that also resumes exactly), best.safetensors (the deployable weights), "
        "results.csv and "
        "results.png to --out. Multi-process: torchrun --nproc_per_node N -m yolopt train ...",
    )
    p.add_argument("--data", help="dataset yaml (path / train / val / names)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="start from these weights (.pt or .safetensors)")
    src.add_argument("--cfg", help="train from scratch: built-in model name (yolov5n...) or a model yaml")
    p.add_argument("--epochs", type=positive_int_arg, default=100, help="epochs (default 100)")
    p.add_argument("--imgsz", type=imgsz_arg, default=640, help="train/val image size (default 640)")
    p.add_argument("--batch", type=positive_int_arg, default=16, help="total batch size over all processes (default 16)")
    p.add_argument("--workers", type=nonneg_int_arg, default=2, help="data loading processes per rank (default 2; 0 = main)")
    p.add_argument("--device", default="auto", help="cpu, 0, 0,1 (use torchrun for several) or auto (default)")
    p.add_argument("--hyp", help="hyperparameter yaml overriding hyp.scratch-low values")
    p.add_argument("--freeze", type=nonneg_int_arg, default=0, help="freeze the first N layers (10 = backbone)")
    p.add_argument("--out", help="run folder (default runs/train/exp, exp2, ...)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a split with images that have no label file, or label files without an image "
                   "(default: one warning line; such images count as background)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                   help="continue the run in DIR (default: newest under runs/train) exactly where it stopped")
    p.add_argument("--val-every", type=positive_int_arg, default=1, help="validate every N epochs (and always the last)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cos-lr", action="store_true", help="cosine instead of linear learning-rate decay")
    p.add_argument("--close-mosaic", type=nonneg_int_arg, default=None, metavar="N",
                   help="turn mosaic off for the last N epochs; N >= --epochs turns it off for the whole run "
                        "(default: the last 10 epochs of a run longer than 10, none of a shorter one)")
    p.add_argument("--nbs", type=positive_int_arg, default=64,
                   help="nominal batch size: gradients are accumulated to about this many images per optimizer "
                        "step and weight decay is scaled to it (default 64, as upstream)")
    # the same names as engine.trainer.OPTIMIZERS, spelled out so `yolopt --help` does not import torch
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD",
                   help="SGD (nesterov, default, as upstream) or Adam/AdamW (momentum is beta1; "
                        "use a smaller lr0 such as 0.001 via --hyp or --lr0)")
    p.add_argument("--lr0", type=float, help="initial learning rate (overrides the hyp value)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP processes")
    p.add_argument("--no-progress", action="store_true", help="one log line per epoch instead of progress bars")
    p.add_argument("--sparsity", type=float, metavar="S",
                   help="network slimming: L1 penalty S on BatchNorm scales (e.g. 1e-4); writes bn_gamma_e*.png and "
                        "sparsity.json (safe prune ratio, its measured mAP cost) every epoch. See docs/compress.md")
    p.add_argument("--sparsity-decay", choices=["none", "linear"], default="none",
                   help="linear: lower the penalty linearly to 1%% of S over the run (default none)")
    p.add_argument("--sparsity-threshold", type=float, default=0.01,
                   help="|gamma| under which a channel counts as prunable (default 0.01)")
    p.add_argument("--teacher", metavar="MODEL",
                   help="distil this model's outputs into the one trained (same classes, anchors and strides); "
                        "a resumed run loads it again. See docs/compress.md")
    p.add_argument("--feature-distill", action="store_true", help="with --teacher: also imitate its neck features")
    p.add_argument("--unlabeled", action="append", default=[], metavar="IMAGES",
                   help="extra images without labels (folder, glob or .txt list; repeatable), learnt from --teacher")
    p.add_argument("--val-data", metavar="DATA.yaml",
                   help="validate on this dataset's val split (needed when --data is a folder of images)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine.trainer import load_hyp, train

    common = {"device": args.device, "workers": args.workers, "progress": not args.no_progress}
    from ..compress.sparsity import BNSparsity

    sparsity = None
    if args.sparsity is not None:
        sparsity = BNSparsity(args.sparsity, decay=args.sparsity_decay, threshold=args.sparsity_threshold)
    if args.resume is not None:
        from ..engine.trainer import find_resume_checkpoint

        run_dir = find_resume_checkpoint(args.resume).parent  # "" = newest run under runs/train
        sparsity = BNSparsity.for_resume(run_dir, given=sparsity)  # a sparsity run resumes with its penalty
    common["callbacks"] = [sparsity] if sparsity is not None else []
    teacher = None
    if args.resume is not None:
        if args.teacher:
            raise YoloptError("--teacher cannot change on --resume: a distilled run resumes with its own teacher "
                              "(distill.json in the run folder)")
        from ..engine.distill import OutputDistillation

        kd, teacher = OutputDistillation.for_resume(run_dir)
        if kd is not None:
            common["callbacks"].append(kd)
    elif args.teacher:
        import yolopt

        from ..engine.distill import OutputDistillation

        teacher = yolopt.load(args.teacher)
        teacher.source_file = args.teacher
        common["callbacks"].append(OutputDistillation(features=args.feature_distill))
    elif args.feature_distill or args.unlabeled:
        raise YoloptError(("--feature-distill" if args.feature_distill else "--unlabeled images") + " need --teacher "
                          "MODEL (the teacher's outputs are what is learnt)")
    common["teacher"] = teacher
    if args.resume is not None:
        res = train(resume=args.resume, **common)
    else:
        if not args.data:
            raise YoloptError("--data DATA.yaml (or a folder of images with --teacher) is required")
        if not (args.weights or args.cfg):
            raise YoloptError("give --weights W (fine-tune) or --cfg yolov5n.yaml (train from scratch)")
        hyp = args.hyp
        if args.lr0 is not None:
            hyp = {**load_hyp(args.hyp), "lr0": args.lr0}
        res = train(args.data, weights=args.weights, cfg=args.cfg, epochs=args.epochs, imgsz=args.imgsz,
                    batch=args.batch, hyp=hyp, freeze=args.freeze, out=args.out, val_every=args.val_every,
                    seed=args.seed, cos_lr=args.cos_lr, close_mosaic=args.close_mosaic, sync_bn=args.sync_bn,
                    nbs=args.nbs, optimizer=args.optimizer, unlabeled=list(args.unlabeled), val_data=args.val_data,
                    strict=args.strict,
                    **common)
    if res is not None and res.out is not None:
        best = f", best fitness {res.best_fitness:.4f} -> {res.best}" if res.best else ""
        log.info("done: %d epochs in %.1f min; last -> %s%s", res.epochs, res.minutes, res.last, best)
    return 0
