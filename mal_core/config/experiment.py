"""The experiment spec: the single source of truth for every MAL parameter.

Field names and defaults follow TAO's MAL config so TAO specs keep working. Each field's metadata (see
:func:`mal_core.config.fields.param`) feeds codegen (schemas, templates, skill.md tables) and spec validation.
"""

from __future__ import annotations

from dataclasses import dataclass

from mal_core.config.archs import ARCHS
from mal_core.config.fields import param, section

_NO_SEARCH = "a path, device or bookkeeping setting, not a model hyperparameter"


@dataclass
class DatasetConfig:
    """Where the COCO data lives and how box crops are made."""

    type: str = param(
        "coco", title="Dataset type", description="Annotation format. Only COCO instances JSON is supported.",
        options=["coco"], automl_enabled=False, automl_reason=_NO_SEARCH,
    )
    train_ann_path: str = param(
        "", title="Training annotations", popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="COCO JSON with the training boxes (segmentation not needed).",
    )
    train_img_dir: str = param(
        "", title="Training image directory", popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Folder holding the training images named by each image's file_name.",
    )
    val_ann_path: str = param(
        "", title="Validation annotations", popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="COCO JSON with validation boxes and, for a meaningful mIoU, ground-truth masks.",
    )
    val_img_dir: str = param(
        "", title="Validation image directory", popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Folder holding the validation images.",
    )
    min_obj_size: float = param(
        2048.0, title="Minimum object size", minimum=0.0, automl_enabled=False,
        automl_reason="a data filter; changing it changes the training set, not the model",
        description="Training keeps boxes whose area w*h is strictly larger than this (pixels).",
    )
    max_obj_size: float = param(
        1e10, title="Maximum object size", minimum=0.0, automl_enabled=False,
        automl_reason="a data filter; changing it changes the training set, not the model",
        description="Training keeps boxes whose area w*h is strictly smaller than this (pixels).",
    )
    num_workers_per_gpu: int = param(
        2, title="Data workers per device", minimum=0, maximum=64, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="DataLoader worker processes per device (0 loads in the main process).",
    )
    load_mask: bool = param(
        True, title="Load ground-truth masks",
        description="Read segmentation masks from the validation JSON to score mIoU. Training never uses masks. "
        "Alias: model.load_mask.",
        automl_enabled=False, automl_reason="must stay true for mIoU-driven AutoML",
    )
    crop_size: int = param(
        512, title="Crop size", minimum=64, maximum=2048, math_cond="/ 16", automl_enabled=False,
        automl_reason="searchable on request (multiples of 16); memory grows with its square so it is off by default",
        description="Side of the square box crop fed to the ViT (pixels). Lower it (512 -> 384 -> 256) on CUDA "
        "out-of-memory. Alias: model.crop_size.",
    )


@dataclass
class ModelConfig:
    """Backbone and mask-head architecture."""

    arch: str = param(
        "vit-mae-base/16", title="Backbone architecture", options=list(ARCHS),
        option_weights=[a.automl_weight for a in ARCHS.values()],
        automl_enabled=False, automl_reason="searchable on request; the weights favour base (best quality per cost)",
        description="ViT variant of the image encoder. vit-mae-nano/8 is a small CPU model; base/large/huge match "
        "the public MAE checkpoints.",
    )
    frozen_stages: list[int] = param(
        [-1], title="Frozen stages", automl_enabled=False, automl_reason="a list; freezing is a deployment choice",
        description="Stages to freeze: [-1] freezes nothing; [first, last] freezes blocks first..last (1-based), and "
        "the patch embedding too when first is 0.",
    )
    mask_head_num_convs: int = param(
        4, title="Mask head convolutions", minimum=1, maximum=16, automl_enabled=None,
        description="Number of 3x3 convolutions in the pixel-wise head; the feature map is upsampled before the last.",
    )
    mask_head_hidden_channel: int = param(
        256, title="Mask head hidden channels", minimum=1, maximum=4096, automl_enabled=None,
        description="Width of the hidden convolutions of the pixel-wise head.",
    )
    mask_head_out_channel: int = param(
        256, title="Mask head output channels", minimum=1, maximum=4096, automl_enabled=None,
        description="Embedding width shared by the instance head and the pixel-wise head.",
    )
    teacher_momentum: float = param(
        0.996, title="Teacher EMA momentum", minimum=0.9, maximum=0.9999, automl_enabled=True,
        automl_reason="controls how fast pseudo-labels follow the student; 0.99-0.9999 all train stably",
        description="Momentum m of the EMA teacher update theta_t = m*theta_t + (1-m)*theta_s.",
    )
    not_adjust_scale: bool = param(
        False, title="Disable scale-adaptive head",
        description="If true, use one fixed feature scale instead of choosing it from the box size bucket.",
    )
    mask_scale_ratio_pre: int = param(
        1, title="Pre-head scale ratio", minimum=1, maximum=8,
        description="Feature-map upscale before the pixel head (fixed-scale path only).",
    )
    mask_scale_ratio: float = param(
        2.0, title="In-head scale ratio", minimum=1.0, maximum=8.0,
        description="Bilinear upscale applied inside the pixel head before its last convolution.",
    )
    mask_stride: int = param(
        4, title="Mask output stride", options=[2, 4], automl_enabled=False,
        automl_reason="a cost/resolution trade-off chosen with the crop size",
        description="Mask logits are crop_size / mask_stride pixels wide: 4 as in MAL; 2 gives finer masks for small "
        "crops (CPU recipe) at a higher head and CRF cost.",
    )
    vit_dpr: float = param(
        0.0, title="Drop-path rate", minimum=0.0, maximum=0.5, automl_enabled=None,
        description="Stochastic-depth rate of the last ViT block (linearly increasing from 0 over the blocks).",
    )
    image_stem_channels: int = param(
        0, title="Image stem channels", minimum=0, maximum=256, automl_enabled=False,
        automl_reason="an architecture choice made with the recipe",
        description="Width of a shallow conv stem on the crop at mask resolution whose features are fused into the "
        "pixel head: colour and edge evidence finer than the ViT token grid. 0 = off (the MAL paper head).",
    )


@dataclass
class CudnnConfig:
    """cuDNN switches."""

    benchmark: bool = param(False, title="cuDNN benchmark", description="Let cuDNN pick the fastest kernels.")
    deterministic: bool = param(
        True, title="Deterministic", description="Prefer deterministic kernels (warns where none exists)."
    )


@dataclass
class TrainConfig:
    """Training schedule, optimiser, losses and devices."""

    num_gpus: int = param(
        1, title="Number of GPUs", minimum=1, maximum=1024, popular=True, automl_enabled=False,
        automl_reason=_NO_SEARCH,
        description="Devices per node. On a machine without CUDA this many CPU processes run (gloo DDP).",
    )
    gpu_ids: list[int] = param(
        [0], title="GPU ids", popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="CUDA device indices to use; its length must equal num_gpus.",
    )
    num_nodes: int = param(
        1, title="Number of nodes", minimum=1, maximum=1024, popular=True, automl_enabled=False,
        automl_reason=_NO_SEARCH,
        description="Machines in a multi-node run (WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT set by the "
        "launcher).",
    )
    seed: int = param(
        1234, title="Random seed", minimum=-1, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Global seed; -1 disables seeding.",
    )
    cudnn: CudnnConfig = section(CudnnConfig, title="cuDNN", description="cuDNN switches.")
    num_epochs: int = param(
        10, title="Number of epochs", minimum=1, maximum=100000, popular=True, automl_enabled=False, parent_param=True,
        automl_reason="the AutoML budget (automl_max_epochs) sets it",
        description="Training epochs (one epoch = one pass over all kept training boxes).",
    )
    time_budget_s: float = param(
        0.0, title="Time budget (s)", minimum=0.0, automl_enabled=False,
        automl_reason="a property of the machine and the deadline, not of the model",
        description="Wall-clock seconds for the whole training job (0 = no limit). num_epochs is then the most "
        "epochs: after the warmup epochs the run measures its epoch and validation times and fixes the epoch "
        "count that fits the time left, and the cosine schedule decays over that count. If later epochs run "
        "slower, the run ends early at an epoch boundary (warning). The last epoch is always validated and "
        "checkpointed.",
        examples=[600],
    )
    checkpoint_interval: int = param(
        1, title="Checkpoint interval", minimum=1, popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Save model_epoch_<EEE>_step_<SSSSS>.pth every this many epochs (or steps, see unit).",
    )
    checkpoint_interval_unit: str = param(
        "epoch", title="Checkpoint interval unit", options=["epoch", "step"], automl_enabled=False,
        automl_reason=_NO_SEARCH, description="Whether checkpoint_interval counts epochs or optimiser steps.",
    )
    validation_interval: int = param(
        1, title="Validation interval", minimum=1, popular=True, automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Validate (val/mIoU) every this many epochs.",
    )
    resume_training_checkpoint_path: str | None = param(
        None, title="Resume checkpoint", automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Checkpoint to resume from. If unset, the newest checkpoint in results_dir is resumed.",
    )
    results_dir: str | None = param(
        None, title="Train results directory", automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Where train writes checkpoints and logs; defaults to the top-level results_dir.",
    )
    batch_size: int = param(
        3, title="Batch size", minimum=1, maximum=1024, popular=True, automl_enabled=None,
        description="Box instances per device per step.",
    )
    accum_grad_batches: int = param(
        1, title="Gradient accumulation", minimum=1, maximum=1, automl_enabled=False,
        automl_reason="fixed at 1 (manual optimisation)",
        description="Kept for TAO compatibility; must be 1 (each step updates the EMA teacher).",
    )
    use_amp: bool = param(
        True, title="Mixed precision", automl_enabled=False, automl_reason=_NO_SEARCH,
        description="bf16 (or fp16) autocast on GPU; CPU runs always use fp32.",
    )
    pretrained_model_path: str | None = param(
        None, title="Pretrained weights", automl_enabled=False, automl_reason=_NO_SEARCH,
        description="Backbone initialisation: a Hugging Face ViT-MAE folder, an original MAE .pth, or a MAL "
        "checkpoint (backbone and heads). Ignored when resuming.",
    )
    optim_type: str = param(
        "adamw", title="Optimizer", options=["adamw"], automl_enabled=False, automl_reason="one option",
        description="Optimizer (AdamW).",
    )
    optim_momentum: float = param(
        0.9, title="Optimizer momentum", minimum=0.0, maximum=1.0, automl_enabled=False,
        automl_reason="unused by AdamW", description="Kept for TAO compatibility; AdamW uses optim_betas.",
    )
    lr: float = param(
        1e-6, title="Learning rate", minimum=1e-7, maximum=1e-3, automl_enabled=True, automl_range=(1e-7, 1e-5),
        automl_reason="the most sensitive knob; MAL fine-tunes a pretrained ViT, 1e-7..1e-5 spans under- to "
        "over-shooting",
        description="Base learning rate per instance per device; the effective rate is lr x devices x batch_size. "
        "1e-6 fine-tunes a pretrained backbone; a backbone trained from scratch needs more (the CPU recipe uses "
        "2e-5).",
    )
    min_lr: float = param(
        0.0, title="Minimum learning rate", minimum=0.0, automl_enabled=False, automl_reason="derived",
        description="Ignored: the floor is computed as effective lr x min_lr_rate.",
    )
    min_lr_rate: float = param(
        0.2, title="Minimum LR ratio", minimum=0.0, maximum=1.0, automl_enabled=None,
        description="Cosine schedule floor as a fraction of the effective learning rate.",
    )
    num_wave: float = param(
        1.0, title="Cosine waves", minimum=0.1, maximum=10.0, automl_enabled=False,
        automl_reason="1 (one half-cosine) is the tested schedule",
        description="Number of cosine periods over the post-warmup epochs.",
    )
    wd: float = param(
        5e-4, title="Weight decay", minimum=1e-5, maximum=1e-2, automl_enabled=True,
        automl_reason="regularisation strength matters for small label sets; log-range 1e-5..1e-2",
        description="AdamW weight decay (applied to all parameters).",
    )
    layer_decay: float = param(
        1.0, title="Layer-wise lr decay", minimum=0.1, maximum=1.0, automl_enabled=False,
        automl_reason="only meaningful with pretrained weights; set it by hand",
        description="Backbone block i (of depth d) trains at lr x layer_decay^(d - i), the patch embedding at "
        "lr x layer_decay^(d + 1); the heads at lr. 1.0 = one rate for all. Below 1 keeps pretrained features "
        "(e.g. 0.65-0.8 when starting from MAE weights).",
    )
    optim_eps: float = param(1e-8, title="Optimizer epsilon", minimum=0.0, description="AdamW epsilon.")
    optim_betas: list[float] = param(
        [0.9, 0.9], title="Optimizer betas", automl_enabled=False, automl_reason="a list",
        description="AdamW (beta1, beta2).",
    )
    warmup_epochs: int = param(
        1, title="Warmup epochs", minimum=0, maximum=50, automl_enabled=True, math_cond="< depends_on",
        depends_on="train.num_epochs", automl_range=(0, 9),
        automl_reason="too short a warmup makes ViT training explode; searched below the default num_epochs (10) "
        "and always below the run's num_epochs",
        description="Epochs of linear learning-rate warmup before the cosine decay. A warmup not below num_epochs "
        "(as TAO's AutoML may propose) is clamped to num_epochs - 1, with a warning.",
    )
    margin_rate: list[float] = param(
        [0.0, 1.2], title="Train margin range", automl_enabled=False, automl_reason="a list",
        description="[low, high] of the random per-side box expansion used for training crops.",
    )
    loss_mil_weight: float = param(
        4.0, title="MIL loss weight", minimum=0.1, maximum=10.0, automl_enabled=True,
        automl_reason="balances box tightness against the CRF's colour consistency",
        description="Weight of the multiple-instance (box projection) loss.",
    )
    loss_crf_weight: float = param(
        0.5, title="CRF loss weight", minimum=0.05, maximum=5.0, automl_enabled=True,
        automl_reason="balances colour-edge self-training against box tightness",
        description="Weight of the CRF self-training loss.",
    )
    crf_zeta: float = param(
        0.1, title="CRF colour bandwidth", minimum=0.01, maximum=1.0, automl_enabled=True,
        automl_reason="sets which colour differences count as edges; data dependent",
        description="zeta in exp(-|I_p - I_q|^2 / (2 zeta^2)) on normalised colours.",
    )
    loss_pairwise_weight: float = param(
        0.0, title="Pairwise loss weight", minimum=0.0, maximum=10.0, automl_enabled=False,
        automl_reason="a recipe choice; 0 keeps the MAL objective",
        description="Weight of the pairwise colour-affinity loss at mask resolution: neighbouring pixels of similar "
        "Lab colour inside the box are pushed to the same label. 0 = off (the MAL paper objective).",
    )
    pairwise_color_thresh: float = param(
        0.3, title="Pairwise colour threshold", minimum=0.0, maximum=1.0, automl_enabled=None,
        description="Neighbour pairs with colour similarity exp(-|Lab_i - Lab_j| / 2) at or above this are edges.",
    )
    pairwise_dilation: int = param(
        2, title="Pairwise dilation", minimum=1, maximum=8, automl_enabled=None,
        description="Distance (mask pixels) between a pixel and its 8 neighbours in the pairwise loss.",
    )
    loss_pairwise_step: int = param(
        0, title="Pairwise warm-up steps", minimum=0, automl_enabled=False, automl_reason="schedule detail",
        description="Steps of epoch 0 over which the pairwise loss weight ramps up linearly.",
    )
    use_gt_masks: bool = param(
        True, title="Learn from given masks", automl_enabled=False, automl_reason="a data choice",
        description="Training instances whose annotation carries a mask (segmentation) also get the mask loss "
        "against it (mixed box + mask supervision); every instance keeps the box losses. Without masks in the "
        "training file, or false, training is box-only exactly as before.",
    )
    loss_mask_weight: float = param(
        1.0, title="Mask loss weight", minimum=0.0, maximum=10.0, automl_enabled=None,
        description="Weight of the mask loss (BCE + Dice against the given mask, cropped like the image, at mask "
        "resolution), averaged over the batch's instances that have a mask.",
    )
    crf_kernel_size: int = param(
        3, title="CRF window", minimum=3, maximum=9, options=[3, 5, 7, 9], automl_enabled=False,
        automl_reason="3 matches the paper's 8-neighbourhood", description="Odd side of the CRF affinity window.",
    )
    crf_num_iter: int = param(
        100, title="CRF iterations", minimum=1, maximum=1000, automl_enabled=False,
        automl_reason="cost knob; converges well before 100",
        description="Mean-field iterations per training step.",
    )
    loss_crf_step: int = param(
        4000, title="CRF warm-up steps", minimum=0, automl_enabled=False, automl_reason="schedule detail",
        description="Steps of epoch 0 over which the CRF loss weight ramps up linearly.",
    )
    loss_mil_step: int = param(
        1000, title="MIL warm-up steps", minimum=0, automl_enabled=False, automl_reason="schedule detail",
        description="Steps of epoch 0 over which the MIL loss weight ramps up linearly.",
    )
    crf_size_ratio: int = param(
        1, title="CRF resolution ratio", minimum=1, maximum=4, automl_enabled=False, automl_reason="cost knob",
        description="CRF runs at (mask-logit side x this ratio).",
    )
    crf_value_high_thres: float = param(
        0.9, title="CRF upper clamp", minimum=0.5, maximum=1.0, automl_enabled=True,
        depends_on="train.crf_value_low_thres",
        math_cond="> depends_on", automl_reason="how confident the pseudo-label may get",
        description="Upper clamp of the mean-field foreground probability.",
    )
    crf_value_low_thres: float = param(
        0.1, title="CRF lower clamp", minimum=0.0, maximum=0.5, automl_enabled=False, parent_param=True,
        automl_reason="mirrors the upper clamp; searched through it",
        description="Lower clamp of the mean-field foreground probability.",
    )


@dataclass
class PostprocessConfig:
    """How masks are made from the network's logits, shared by validation, evaluate and inference. A trained
    checkpoint stores the values it was validated with; evaluate and inference use those unless a key is set
    for the run."""

    mask_thres: list[float] = param(
        [0.1], title="Mask thresholds", automl_enabled=False, automl_reason="a list",
        description="Foreground probability threshold: one value, or three for small/medium/large boxes.",
    )
    margin_rate: list[float] = param(
        [0.6, 0.6], title="Test margin", automl_enabled=False, automl_reason="a list",
        description="Test crops expand each side of the box by margin_rate[0]/2 of its half-size.",
    )
    colour_weight: float = param(
        0.0, title="Colour-model weight", minimum=0.0, maximum=50.0, automl_enabled=False,
        automl_reason="a test-time choice",
        description="Weight of each instance's own colour model (object colours from its mask, background colours "
        "from the crop outside its box) added to the network's logits, before refine_iters. 0 = off.",
    )
    colour_iters: int = param(
        3, title="Colour-model rounds", minimum=1, maximum=20, automl_enabled=False,
        automl_reason="a test-time choice",
        description="Rounds of re-estimating the object's colour model from the current mask (with "
        "colour_weight > 0).",
    )
    refine_iters: int = param(
        0, title="CRF refinement iterations", minimum=0, maximum=200, automl_enabled=False,
        automl_reason="a test-time choice",
        description="Mean-field iterations that refine predicted masks with the image's colour edges (the training "
        "CRF's kernel and bandwidth, train.crf_kernel_size and train.crf_zeta). 0 = off.",
    )
    use_amp: bool = param(
        True, title="Mixed precision", description="bf16 autocast when labelling on a GPU (ignored on CPU)."
    )


@dataclass
class EvaluateConfig:
    """Scoring a checkpoint on the validation set."""

    num_gpus: int = param(1, title="Number of GPUs", minimum=1, maximum=1024, popular=True,
                          description="Devices per node.")
    gpu_ids: list[int] = param([0], title="GPU ids", popular=True, description="CUDA device indices to use.")
    num_nodes: int = param(1, title="Number of nodes", minimum=1, maximum=1024, popular=True,
                           description="Machines to use.")
    checkpoint: str = param(
        "", title="Checkpoint", required=True,
        description="MAL checkpoint (.pth) to evaluate, or an ONNX file written by export."
    )
    results_dir: str | None = param(
        None, title="Evaluate results directory", description="Defaults to the top-level results_dir."
    )
    batch_size: int = param(3, title="Batch size", minimum=1, maximum=1024, description="Instances per step.")
    use_mixed_model_test: bool = param(
        False, title="Mixed student/teacher", description="Average student and teacher logits (wins over teacher)."
    )
    use_teacher_test: bool = param(False, title="Use teacher", description="Predict with the EMA teacher.")
    comp_clustering: bool = param(
        False, title="Clustering score",
        description="Also report the feature clustering score (mean squared distance of normalised features to their "
        "FG/BG centroid; lower separates better).",
    )
    use_flip_test: bool = param(
        False, title="Flip test", description="Average logits of the crop and its horizontal flip."
    )
    shard_size: int = param(
        64, title="Images per shard", minimum=1, maximum=1000000,
        description="Evaluation labels the boxes shard by shard like inference (each finished shard saved, metrics "
        "summed per shard), so a re-run after a kill scores only the unfinished shards.",
    )


@dataclass
class InferenceConfig:
    """Labelling boxes with masks."""

    num_gpus: int = param(1, title="Number of GPUs", minimum=1, maximum=1024, popular=True,
                          description="In-process labelling runs on the first of gpu_ids (when CUDA is present); "
                          "for several GPUs or machines use num_workers (Ray), one GPU per worker.")
    gpu_ids: list[int] = param([0], title="GPU ids", popular=True, description="CUDA device indices to use.")
    num_nodes: int = param(1, title="Number of nodes", minimum=1, maximum=1024, popular=True,
                           description="Kept for TAO spec compatibility; labelling on several machines uses "
                           "num_workers with ray_address.")
    checkpoint: str = param("", title="Checkpoint", required=True,
                            description="MAL checkpoint (.pth) to label with, or an ONNX file written by export.")
    results_dir: str | None = param(
        None, title="Inference results directory", description="Defaults to the top-level results_dir."
    )
    batch_size: int = param(3, title="Batch size", minimum=1, maximum=1024, description="Instances per step.")
    ann_path: str = param(
        "", title="Boxes to label", popular=True, description="COCO JSON whose boxes get masks (segmentation optional)."
    )
    img_dir: str = param("", title="Image directory", popular=True, description="Folder holding the images.")
    label_dump_path: str = param(
        "instances_val2017_mal.json", title="Label output file",
        description="Output COCO JSON, relative to results_dir: the input JSON with annotations replaced by masks.",
    )
    load_mask: bool = param(
        False, title="Score against GT masks", description="If the input has masks, add each label's IoU to it."
    )
    use_flip_test: bool = param(False, title="Flip test", description="Average logits of the crop and its flip.")
    use_teacher_test: bool = param(False, title="Use teacher", description="Label with the EMA teacher.")
    use_mixed_model_test: bool = param(
        False, title="Mixed student/teacher", description="Average student and teacher logits."
    )
    save_overlays: bool = param(
        False, title="Write overlays", description="Write PNG overlays of the masks on the images for review."
    )
    max_overlays: int = param(
        100, title="Overlay limit", minimum=0, description="Write overlays for at most this many images."
    )
    review_page: bool = param(
        True, title="Write review page",
        description="Write review/index.html: one thumbnail per label (image crop, box, mask, score), worst score "
        "first, so a person can fix the least reliable masks first.",
    )
    max_review_items: int = param(
        300, title="Review page size", minimum=1, maximum=100000,
        description="The review page shows at most this many labels (the lowest scores).",
    )
    shard_size: int = param(
        64, title="Images per shard", minimum=1, maximum=1000000,
        description="Labelling runs shard by shard (this many images each); each finished shard is saved at "
        "once, so a re-run of the job after a kill labels only the unfinished shards, and memory depends on the "
        "shard size, not on the dataset.",
    )
    num_workers: int = param(
        0, title="Ray workers", minimum=0, maximum=4096,
        description="0: label in this process. N: N Ray actors (each loads the network once) take shards as "
        "tasks; a lost worker's shard is retried.",
    )
    ray_address: str = param(
        "", title="Ray cluster address",
        description="Empty: start a local Ray. Otherwise an existing cluster's address (e.g. auto or "
        "ray://host:10001); the job folder must then be on a filesystem every node sees.",
    )
    gpus_per_worker: float = param(
        1.0, title="GPUs per Ray worker", minimum=0.0, maximum=64.0,
        description="GPUs each Ray worker asks for when the cluster has GPUs (fractions share a GPU); ignored "
        "on a cluster without GPUs.",
    )
    output_formats: list[str] = param(
        [], title="Also deliver as",
        description="Delivery formats written at the end of the run into <results folder>/<format>/, as the "
        "convert action writes them with its defaults (any of coco_rle, coco_polygon, yolo_seg, label_studio, "
        "cvat).")
    output_uri: str = param(
        "", title="Also upload to",
        description="s3://bucket/prefix: the labelled COCO file is also uploaded there (S3 endpoint from "
        "AWS_ENDPOINT_URL when set).",
    )


#: The delivery formats ``convert`` writes, each into ``<results folder>/<name>/`` (see mal_core/engine/formats).
DELIVERY_FORMATS = ("coco_rle", "coco_polygon", "yolo_seg", "label_studio", "cvat", "train_masks")


@dataclass
class ConvertConfig:
    """Delivering labelled masks in the formats training frameworks and review tools load."""

    ann_path: str = param(
        "", title="Labelled COCO file", required=True, popular=True,
        description="COCO JSON with masks to deliver (an inference job's label file; --parent-job-id of an "
        "inference job fills it).")
    img_dir: str = param(
        "", title="Image directory", popular=True,
        description="Folder holding the images (needed by yolo_seg, whose dataset links or copies them; filled "
        "from an inference parent).")
    results_dir: str | None = param(
        None, title="Convert results directory", description="Defaults to the top-level results_dir.")
    formats: list[str] = param(
        list(DELIVERY_FORMATS[:5]), title="Formats", popular=True,
        description="Any of coco_rle, coco_polygon, yolo_seg, label_studio, cvat, train_masks; each is written "
        "into its own folder <results folder>/<format>/. train_masks: the training file of the review loop (masks "
        "only where a person accepted or corrected them, boxes elsewhere) for train --parent-job-id <this job>.")
    polygon_tolerance: float = param(
        0.5, title="Polygon tolerance (px)", minimum=0.0, maximum=100.0,
        description="Douglas-Peucker tolerance in pixels when masks become polygons (0: every border vertex).")
    min_score: float = param(
        0.0, title="Minimum score", minimum=0.0, maximum=1.0,
        description="Labels scored below this are left out (as rejected labels are).")
    class_min_scores: list[str] = param(
        [], title="Per-class minimum scores",
        description="NAME=SCORE entries (category name or id), e.g. [person=0.4]; they override min_score for "
        "those classes.")
    decisions_path: str = param(
        "", title="Review decisions",
        description="decisions.json downloaded from the review page: rejected labels follow convert.rejected; "
        "needs_fixing labels go to the review-tool formats (label_studio, cvat) first and are left out of the "
        "training formats like rejected ones.")
    corrections_path: str = param(
        "", title="Corrected masks",
        description="COCO JSON holding corrected masks (e.g. exported from the review tool), matched to the "
        "labels by annotation id; train_masks uses them in place of the predicted masks.")
    model_checkpoint: str = param(
        "", title="Labelling model",
        description="The checkpoint that made the labels (filled from an inference parent); a train job chained "
        "to this job fine-tunes from it.")
    rejected: str = param(
        "drop", title="Rejected labels", options=["drop", "box_only"],
        description="drop: left out; box_only: kept as a box without a mask (COCO segmentation [], Label Studio "
        "rectangle, CVAT box; yolo_seg cannot hold a box, so it leaves them out).")
    label_studio_masks: str = param(
        "brush", title="Label Studio masks", options=["brush", "polygon"],
        description="brush: Label Studio's own RLE (exact); polygon: polygonlabels in percent of the image.")
    image_url_prefix: str = param(
        "/data/local-files/?d=", title="Label Studio image URL prefix",
        description="Prefix of each task's image URL before the COCO file_name (Label Studio local files by "
        "default; e.g. s3://bucket/images/ for cloud storage).")
    yolo_images: str = param(
        "symlink", title="YOLO images", options=["symlink", "copy"],
        description="How the yolo_seg dataset holds the images (Ultralytics finds labels by replacing images/ "
        "with labels/ in each image path): links to img_dir, or copies.")
    model_version: str = param(
        "", title="Model version",
        description="model_version of the Label Studio predictions (default: the labelled file's name).")


@dataclass
class ExportConfig:
    """Exporting a trained checkpoint to ONNX."""

    checkpoint: str = param("", title="Checkpoint", required=True,
                            description="MAL checkpoint (.pth) to export.")
    results_dir: str | None = param(
        None, title="Export results directory", description="Defaults to the top-level results_dir."
    )
    onnx_file: str = param(
        "model.onnx", title="ONNX file",
        description="Output file, relative to the results folder (it must stay inside it).",
    )
    opset_version: int = param(17, title="ONNX opset", minimum=14, maximum=20,
                               description="ONNX opset version of the exported graph.")
    batch_size: int = param(
        -1, title="Batch size", minimum=-1, maximum=1024,
        description="Fixed batch size of the graph; -1 exports a dynamic batch axis.",
    )


@dataclass
class PretrainConfig:
    """MAE self-supervised pretraining of the ViT backbone on the user's own images (no labels).

    ``model.arch`` and ``dataset.crop_size`` are shared with ``train`` so the weights fit the MAL backbone.
    """

    num_gpus: int = param(1, title="Number of GPUs", minimum=1, maximum=1024, popular=True,
                          description="Devices to pretrain on (CPU processes when no GPU is present).")
    gpu_ids: list[int] = param([0], title="GPU ids", popular=True, description="CUDA device indices to use.")
    num_nodes: int = param(1, title="Number of nodes", minimum=1, maximum=1024,
                           description="Machines for multi-node pretraining.")
    seed: int = param(1234, title="Seed", minimum=-1, maximum=2**31 - 1, description="Random seed; -1 = none.")
    results_dir: str | None = param(
        None, title="Pretrain results directory", description="Defaults to the top-level results_dir."
    )
    img_dir: str = param(
        "", title="Image directory", required=True, popular=True,
        description="Folder (or images.tar.gz / s3:// prefix) of the images to pretrain on; no labels needed.",
    )
    ann_path: str = param(
        "", title="Box annotations",
        description="Optional COCO JSON of boxes in img_dir: when given, crops around boxes are sampled alongside "
        "random crops of whole images (see box_crop_prob).",
    )
    box_crop_prob: float = param(
        0.5, title="Box-crop share", minimum=0.0, maximum=1.0,
        description="With ann_path: probability that a sample is a crop around one of the image's boxes (with "
        "the train margins) instead of a random crop of the whole image.",
    )
    num_epochs: int = param(200, title="Epochs", minimum=1, maximum=100000, popular=True,
                            description="Epochs of pretraining (see views_per_epoch for what one epoch is).")
    views_per_epoch: int = param(
        0, title="Views per epoch", minimum=0, maximum=10_000_000,
        description="Random views drawn per epoch (images sampled with replacement), so the cost of an epoch does "
        "not depend on how many images there are; 0 = one view of each image per epoch.",
    )
    batch_size: int = param(64, title="Batch size", minimum=1, maximum=4096, popular=True,
                            description="Images per step per device.")
    lr: float = param(1.5e-4, title="Learning rate", minimum=0.0, maximum=1.0, popular=True,
                      description="Peak AdamW learning rate (after warmup; cosine decay to 0).")
    wd: float = param(0.05, title="Weight decay", minimum=0.0, maximum=1.0,
                      description="AdamW weight decay (not applied to biases, norms and position/class tokens).")
    warmup_epochs: int = param(10, title="Warmup epochs", minimum=0, maximum=10000,
                               description="Linear learning-rate warmup; clamped below num_epochs.")
    mask_ratio: float = param(0.75, title="Mask ratio", minimum=0.05, maximum=0.95, popular=True,
                              description="Fraction of patches hidden from the encoder.")
    norm_pix_loss: bool = param(True, title="Per-patch normalised target",
                                description="Reconstruct each patch normalised by its own mean and variance.")
    decoder_hidden_size: int = param(512, title="Decoder width", minimum=16, maximum=4096,
                                     description="Hidden size of the light reconstruction decoder.")
    decoder_num_layers: int = param(8, title="Decoder depth", minimum=1, maximum=64,
                                    description="Transformer blocks in the decoder.")
    decoder_num_heads: int = param(16, title="Decoder heads", minimum=1, maximum=64,
                                   description="Attention heads of the decoder (must divide its width).")
    min_crop_scale: float = param(
        0.2, title="Smallest crop", minimum=0.01, maximum=1.0,
        description="Random crops of whole images cover between this fraction of the image area and all of it.",
    )
    hflip: bool = param(True, title="Horizontal flip", description="Flip half of the samples left-right.")
    use_amp: bool = param(True, title="Mixed precision", description="bf16 autocast on GPUs (ignored on CPU).")
    num_workers: int = param(2, title="Loader workers", minimum=0, maximum=64,
                             description="Image-decoding worker processes per device.")
    checkpoint_interval: int = param(10, title="Checkpoint interval", minimum=1, maximum=100000,
                                     description="Epochs between checkpoints (the last epoch always writes one).")
    pretrained_model_path: str | None = param(
        None, title="Start weights", popular=True,
        description="Continue pretraining from these ViT-MAE weights (Hugging Face folder or MAE .pth); empty = "
        "random initialisation.",
    )
    resume_training_checkpoint_path: str | None = param(
        None, title="Resume checkpoint", description="Pretrain checkpoint to resume; default: the newest in the "
        "job's folder.",
    )
    num_vis_images: int = param(8, title="Images in the reconstruction grid", minimum=1, maximum=64,
                                description="Rows of reconstruction.png (masked input, reconstruction, original).")


@dataclass
class ExperimentConfig:
    """A full MAL experiment spec: data, model, and the train/evaluate/inference/export actions."""

    results_dir: str = param(
        "", title="Results directory", popular=True, description="Folder for every output of the action."
    )
    dataset: DatasetConfig = section(DatasetConfig, title="Dataset", description="Data paths and crops.")
    model: ModelConfig = section(ModelConfig, title="Model", description="Backbone and heads.")
    train: TrainConfig = section(TrainConfig, title="Train", description="Training settings.")
    postprocess: PostprocessConfig = section(
        PostprocessConfig, title="Post-processing",
        description="Logits to masks, shared by validation, evaluate and inference (stored in the checkpoint).")
    evaluate: EvaluateConfig = section(EvaluateConfig, title="Evaluate", description="Evaluation settings.")
    inference: InferenceConfig = section(InferenceConfig, title="Inference", description="Labelling settings.")
    export: ExportConfig = section(ExportConfig, title="Export", description="ONNX export settings.")
    convert: ConvertConfig = section(ConvertConfig, title="Convert",
                                     description="Delivery formats of labelled masks.")
    pretrain: PretrainConfig = section(PretrainConfig, title="Pretrain",
                                       description="MAE self-pretraining of the backbone.")


#: Keys of the seed document that are accepted as aliases of the canonical keys.
KEY_ALIASES: dict[str, str] = {
    "model.crop_size": "dataset.crop_size",
    "model.load_mask": "dataset.load_mask",
    "train.mask_thres": "postprocess.mask_thres",
    "train.test_margin_rate": "postprocess.margin_rate",
    "model.test_colour_weight": "postprocess.colour_weight",
    "model.test_colour_iters": "postprocess.colour_iters",
    "model.test_refine_iters": "postprocess.refine_iters",
}
#: Aliases kept for specs written before the ``postprocess`` section: accepted, with a deprecation warning.
DEPRECATED_ALIASES: frozenset[str] = frozenset(
    k for k, v in KEY_ALIASES.items() if v.startswith("postprocess."))
