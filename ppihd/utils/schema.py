"""Every configuration key ppihd knows, with its default (yacs-style: declared in one place).

The defaults are the paper's setting (``configs/swin_b_seq.yaml`` spells the same values out with
comments). A config file or ``-o`` override naming a key absent here is rejected with the nearest
known keys. A key whose default is ``None`` accepts any type; otherwise the type must match
(an int is accepted where a float is expected). Sections whose name is listed in ``OPEN_SECTIONS``
accept arbitrary sub-keys (kwargs of a registered component chosen by ``name``).

Contributors: add a key here (with a comment: its paper name, unit, reference-code value) and use
it from the config; never read a key that is not declared here.
"""
from __future__ import annotations

from typing import Any, Dict

DEFAULTS: Dict[str, Any] = {
    "Global": {
        "device": "cpu",              # cpu | gpu | gpu:N | auto (gpu when one is visible, else cpu);
                                      # a GPU that is not there is an error (exit 2), never a fallback
        "num_threads": 2,             # CPU intra-op threads (paddle sets 1 when OMP_NUM_THREADS is unset)
        "seed": 42,
        "output_dir": "output",
        "iters": 80000,               # paper: 80,000 iterations (reference: 60,000 on 4 GPUs)
        "log_interval": 20,           # iterations between log lines
        "eval_interval": 2000,        # iterations between validations (0 = only at the end)
        "save_interval": 2000,        # iterations between `latest` checkpoints
        "pretrained_model": None,     # our checkpoint (.pdparams) to start from / infer with
        "checkpoints": None,          # a `latest` checkpoint prefix to resume training from
        "save_inference_dir": "output/inference",
        "amp": None,                  # None | fp16 | bf16 (GPU only; fp16 needs compute capability >= 7.0, bf16
                                      # >= 8.0 + CUDA 11, Paddle's rule: otherwise an error, never a silent fp32)
        "amp_max_bad_steps": 20,      # fp16: the GradScaler skips a step with non-finite gradients and halves the
                                      # scale; this many skipped steps IN A ROW stop the run (checked at log lines)
        "grad_accum": 1,              # series accumulated per optimizer step
        "grad_clip": None,            # global-norm clip value, None = off
        "use_visualdl": True,         # VisualDL scalars in <output_dir>/vdl (visualdl --logdir <output_dir>/vdl)
        "progress_bar": True,
        "eval_max_series": None,      # cap on val series per periodic evaluation (None = all; final eval uses all)
        "keep_best": True,            # also save `best_model` when the val metric improves
        "start_over": False,          # train from scratch into an output_dir that holds checkpoints (replacing them);
                                      # without it such a folder is refused unless Global.checkpoints resumes it
    },
    "Data": {
        "root": "data/demo",                       # folder in the RSNA layout
        "train_dir": "stage_2_train",
        "test_dir": "stage_2_test",
        "label_csv": "stage_2_train.csv",
        "pseudo_label_csv": None,                  # pseudo.csv from tools/pseudo_label.py (FixMatch)
        "cache_dir": None,                         # default: <root>/cache_<image_size>
        "index_file": None,                        # default: <cache_dir>/index.csv
        "windows": [[40, 80], [80, 200], [40, 380]],  # (center, width): brain, blood, soft tissue
        "fix_intercept": True,                     # RSNA corrupt-intercept fix (reference lacks it)
        "remove_black_edges": True,                # paper: RBE, opening 5x5 ellipse x3 then crop
        "opening_kernel": 5,
        "opening_iterations": 3,
        "crop_inclusive": True,                    # False = reference (drops last row/column)
        "empty_opening": "keep",                   # the opening leaves nothing: keep (the uncropped slice) | zero
                                                   # (an all-zero slice, as the reference's remove_black_edge)
        "image_size": 224,                         # cache / model input side
        "cache_size": None,                        # None = the cache holds each crop resized to image_size (ppihd);
                                                   # N = each slice's native black-edge crop in an N x N canvas, so
                                                   # RandomResizedCrop cuts the real crop and resizes once to
                                                   # image_size, as the reference (docs/data.md §5, deviations.md)
        "slice_order": "normal",                   # normal (tilt-aware) | reference (lexicographic x,y,z)
        "max_slices": None,                        # at most this many contiguous slices of a series, in every
                                                   # split (train: random start; val/test: centred); None = all
                                                   # (paper: "up to 60"; reference: a hard limit of 60)
        "val_fraction": 0.1,                       # paper: 10 % of series
        "split_seed": 42,                          # reference: 42
        "group_by_patient": False,                 # reference: series-level split
        "split": "ppihd",                          # ppihd (numpy permutation, round(0.1 n) series) | reference
                                                   # (sklearn train_test_split(sorted unique SeriesInstanceUIDs,
                                                   # test_size=val_fraction, random_state=split_seed): the
                                                   # authors' exact split, ceil(0.1 n) series; docs/deviations.md)
        "num_workers": 2,                          # header scan / cache writer processes
    },
    "DataLoader": {
        "Train": {
            "num_workers": 0,
            "uint8": True,                         # training series stay uint8 until the model's process (loader
                                                   # threads/workers skip the float pass, 4x fewer bytes), where
                                                   # they become float32 / 255 on the device: the same numbers
            "batch_series": 1,                     # paper: one series per GPU per step
            "shuffle": True,
            "length_buckets": False,               # True: the micro-batches of one optimizer step (all ranks, all
                                                   # grad_accum) are series of similar length (less waiting for the
                                                   # longest; still every series once per epoch). Paper: uniform
                                                   # (docs/deviations.md)
            "pin_memory": True,                    # GPU runs: prefetch threads put batches in page-locked memory
                                                   # (asynchronous host -> device copies); no effect on CPU
            "augment": {
                "random_resized_crop": True,
                "scale": [0.8, 1.2],
                "ratio": [0.75, 1.3333333333333333],
                "interpolation": "bicubic",
                "hflip": 0.5,
                "vflip": 0.5,
                "rotate": 0.0,                     # degrees, uniform +-; reference: 180
                "per_slice": True,                 # reference draws per slice; False = per series
                "crop_oversize": "pad",            # scale > 1: crop box larger than the image -> pad (zeros) | clamp
                "crop_sampler": "ppihd",           # ppihd (log-uniform ratio, crop_oversize) | reference (authors'
                                                   # easymia/torchvision rule: uniform ratio, random w/h swap, boxes
                                                   # larger than the slice re-drawn <= 10 times, then the centred
                                                   # min(H, W) square; crop_oversize unused)
            },
            "strong_augment": {                    # FixMatch A(.) for pseudo-labelled series (paper gives no values)
                "crop_scale": [0.5, 1.0],          # random resized crop: area fraction of the slice
                "crop_ratio": [0.75, 1.3333333333333333],  # aspect ratio range of the crop box
                "hflip": 0.5,                      # probability
                "vflip": 0.5,                      # probability
                "rotate": 30.0,                    # degrees, uniform +-
                "blur_sigma": [0.1, 2.0],          # Gaussian blur sigma range, pixels
                "blur_prob": 0.5,
                "distortion": "grid",              # grid | elastic
                "distortion_prob": 0.5,
                "distortion_strength": 0.3,        # max displacement as a fraction of one grid cell (side / grid_steps)
                "grid_steps": 5,                   # grid distortion cells per side
                "per_slice": True,                 # draw parameters per slice (False = one draw per series)
            },
        },
        "Eval": {
            "num_workers": 0,
            "batch_series": 1,
            "pad_to": None,                        # None = series as they are (masked batches) | 60 = the reference's
                                                   # evaluation: black slices up to 60, backbone + sequence encoder
                                                   # run on them without a mask (real slices scored only)
        },
    },
    "Arch": {
        "name": "IHDNet",
        "backbone": {
            "name": "SwinTransformer",
            "variant": "base",                     # tiny | small | base | (micro: tests/demos)
            "patch_size": 4,
            "embed_dim": None,                     # None = from variant (base: 128)
            "depths": None,                        # None = from variant (base: [2, 2, 18, 2])
            "num_heads": None,                     # None = from variant (base: [4, 8, 16, 32])
            "window_size": 7,
            "mlp_ratio": 4.0,
            "qkv_bias": True,
            "drop_rate": 0.0,
            "attn_drop_rate": 0.0,
            "drop_path_rate": 0.5,                 # linear over all blocks (reference)
            "post_norm": True,                     # paper: PN (res-post-norm)
            "post_norm_init": "zero",              # zero = Swin V2 res-post-norm init (block norm1/norm2 weight
                                                   # and bias 0: identity blocks at init) | one = plain LN init;
                                                   # only with post_norm; pretrained weights overwrite it
            "recompute": False,                    # activation checkpointing per stage
            "stem": "patch",                       # patch (Swin: patchify conv, ImageNet-loadable) | conv (3x3
                                                   # stride-2 conv+BN+ReLU stages, from-scratch demo; not in paper)
            "stem_channels": None,                 # conv stem widths per stride-2 stage (None = C/2^(k-1) ... C)
            "pool": "avg",                         # avg (Swin, paper) | max over tokens (CPU demo; not in paper)
        },
        "pretrained": None,                        # ImageNet backbone weights (.pdparams, PaddleClas names)
        "inter_slice": True,                       # paper: InterExt (sequence transformer)
        "deep_supervision": True,                  # paper: DS (auxiliary head 1)
        "sequence": {
            "num_layers": 2,
            "num_heads": 2,
            "dim_feedforward": 200,
            "dropout": 0.2,
            "pos_dropout": 0.2,
            "padding_mask": True,                  # False = reference (no key-padding mask)
        },
        "num_classes": 6,
        "head_init": "default",                    # default (Paddle Linear init; see Arch.init) | zero (head 1/2
                                                   # weights 0: both heads start at head_bias for every input)
        "head_bias": None,                         # None (0) | 6 initial head 1/2 bias logits (e.g. prior logits)
        "init": "paddle",                          # paddle (Paddle layer defaults) | reference (authors' code:
                                                   # sequence-encoder Linear weights U(-0.1, 0.1), biases 0; head 1
                                                   # TruncatedNormal(0.02, cut at +-2 std), bias 0; head 2 default)
    },
    "Loss": {
        "name": "IHDLoss",                         # registered in ppihd.loss.LOSSES
        "static_weight": True,                     # paper: SW
        "class_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
        "dynamic_weight": True,                    # paper: DW (reference formula, positives only)
        "head2_weight": 2.0,                       # reference: L = 2*L2 + 1*L1
        "head1_weight": 1.0,
        "unlabeled_weight": 1.0,                   # FixMatch L_u
        "dynamic_weight_eps": 1e-7,                # reference: p_c = 2 n-_c / (n+_c + n-_c + 1e-7)
    },
    "Optimizer": {
        "name": "Momentum",                        # Momentum (SGD, paper) | AdamW (CPU demo; not in paper)
        "momentum": 0.9,                           # SGD momentum (Momentum only)
        "nesterov": False,                         # reference: True (Momentum only)
        "beta1": 0.9,                              # AdamW beta1 (AdamW only; beta2 is 0.999)
        "multi_tensor": None,                      # Momentum: Paddle's merged update of all parameters (use_multi_tensor,
                                                   # same numbers); None = on for GPU runs, off on CPU
        "weight_decay": 1e-4,                      # coupled L2
        "lr": {
            "name": "CosineWarmup",
            "learning_rate": 1e-3,                 # warmed LR
            "warmup_steps": 300,
            "warmup_start_lr": 0.0,
            "end_lr": 0.0,
        },
    },
    "Metric": {
        "eps": 1e-7,                               # probability clip [eps, 1-eps] for the log loss
        "class_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
    },
    "Infer": {                                     # tools/infer.py, deploy/python/predict.py (docs/inference.md)
        "batch_series": 1,                         # series per dygraph forward (padded + key-padding mask)
        "threshold": 0.5,                          # slices above it are listed in series.json / shaded in the PNG
        "chunk_slices": 128,                       # series longer than this go in overlapping chunks (memory:
                                                   # ~29 MB/slice for Swin-B on CPU); None = always whole series.
                                                   # Every RSNA series (<= ~60 slices) is one pass either way.
        "chunk_overlap": 32,                       # slices shared by consecutive chunks (their probabilities averaged)
        # numerics and GPU engine (docs/inference.md "GPU"); --precision / --trt of the tools set them
        "precision": "fp32",                       # fp32 | fp16 (NVIDIA GPU, compute capability >= 7.0: Paddle
                                                   # Inference mixed precision / dygraph auto_cast O1, or TensorRT
                                                   # fp16 with trt) | bf16 (exported model on a CPU with
                                                   # AVX512-BF16/AMX, export with Export.bf16; predict.py only)
        "trt": False,                              # TensorRT subgraphs on GPU (deploy/python/predict.py; Paddle
                                                   # Inference built with TensorRT); off = Paddle's own GPU kernels
        "trt_max_slices": None,                    # largest slice count the engines take; None = chunk_slices
                                                   # (with trt, chunks are at most this long, also when
                                                   # chunk_slices is null / 0)
        "trt_opt_slices": 40,                      # slice count the engines are tuned for (an RSNA series: 24-60),
                                                   # min(this, the max); the smallest is always 1
        "trt_workspace_mb": 1024,                  # TensorRT builder workspace (MB)
        "trt_cache_dir": None,                     # where the converted program / shape ranges / engines are kept
                                                   # (a subfolder per model content, precision, slice range and
                                                   # workspace; built on the first run, reused after); None =
                                                   # <model_dir>/trt. precision and trt* are not written into
                                                   # inference.yml (properties of the deploying machine)
        "key_slices": 4,                           # brain-window thumbnails in the per-series PNG
        "save_plots": True,                        # write series/<series_id>.png (the JSON is always written)
        "dicom_sr": True,                          # write sr/<study_id>.dcm: a DICOM Comprehensive 3D SR (TID 1500)
                                                   # per study with an answer, for a PACS (ppihd.engine.dicom_sr)
        "report_html": True,                       # write report.html: the studies by P(any), thumbnails, links to
                                                   # the series PNGs; opens from disk (ppihd.engine.report_html)
        # studies (ppihd.data.study, docs/inference.md "Studies"): which series the model reads, which answers
        "predict_series": "usable",                # usable (every axial CT series) | primary (one per study)
        "min_slices": 3,                           # fewer slices -> role too_few_slices, not predicted (1-2
                                                   # images are key images or screens, never a brain volume)
        "axial_max_angle_deg": 40.0,               # slice normal further than this from z -> non_axial (gantry
                                                   # tilt reaches ~30 deg; coronal/sagittal are 90)
        "train_spacing_mm": 5.0,                   # slice spacing of the training series (RSNA: ~5 mm): the
                                                   # primary series is the usable one closest to it
        "slab_mm": 5.0,                            # thin series averaged (in HU) into slabs of round(slab_mm /
                                                   # spacing) slices before the model, each slice then gets its
                                                   # slab's probability; applies below slab_mm / 1.5 spacing, so
                                                   # RSNA-like series are untouched; None = off (every slice as is)
        "study_aggregation": "primary_max",        # study probability: primary_max (max over the primary series'
                                                   # slices) | all_max (max over every predicted series)
    },
    "Export": {                                    # tools/export_model.py
        "onnx": False,                             # also write inference.onnx (paddle2onnx, --optimize_tool None)
        "npz": False,                              # also write weights.npz: the dygraph weights as plain arrays, which
                                                   # -o Global.pretrained_model=weights.npz loads without unpickling
        "opset_version": 13,                       # ONNX opset
        "bf16": False,                             # also write inference_stem + inference_body: the programs of
                                                   # deploy/python/predict.py --precision bf16 (fp32 stem, bf16 rest)
        "bf16_kernels": True,                      # trace inference_body with key-major attention scores and one-hot
                                                   # permutations of small grids (exact; ~12 % faster in bf16);
                                                   # False = the plain formulation, for A/B (docs/benchmarks.md)
    },
    "PseudoLabel": {
        "tau_s": 0.95,                             # series kept if every slice/class has max(p,1-p) > tau_s
                                                   # (paper gives no value; see docs/reproduce.md)
        "tau_p": 0.5,                              # paper: 0.5 (pseudo-label = p > tau_p)
    },
    "Ensemble": {
        "mode": "paper",                           # paper: tau on the weighted mean | reference: tau_h where
                                                   # ALL models exceed it, weights 0.85/0.05/0.10
        "tau_h": 0.998,                            # p > tau_h -> 1 (paper gives no value; reference: 0.998)
        "tau_l": None,                             # p < tau_l -> 0 (None = off; reference: off)
    },
    "Ablation": {                                  # configs/ablation/*.yaml: which row of the paper's Table 3 a
                                                   # config is (tools/run_ablation.py, ppihd.engine.ablation)
        "row": None,                               # the row's Table-3 label, e.g. "+ PN"
        "adds": None,                              # the component the row switches on over its _base_ row: Inter |
                                                   # RBE | DS | PN | DW | SW | FM (None = the first row)
        "description": None,                       # what that component is, in the paper's words
        "paper_log_loss": None,                    # the paper's private-LB log loss of the row
    },
    "SlicePretrain": {                             # tools/pretrain_slices.py: backbone + slice head on random slices
                                                   # across series, the CPU demo's stand-in for ImageNet weights
                                                   # (not in the paper; docs/training.md "Demo")
        "iters": 300,
        "batch_slices": 16,                        # slices per step, drawn across all training series
        "eval_interval": 100,                      # val weighted log loss; the best backbone is kept
        "augment": "flip",                         # none | flip (h/v flips at 0.5 per slice) | train
                                                   # (DataLoader.Train.augment, per slice)
        "output_dir": None,                        # None = <Global.output_dir>/slice_pretrain
        "stem_head_weight": 0.0,                   # > 0: + this x the loss of a slice head on the max-pooled last
                                                   # conv-stem map (stem: conv only)
        "Optimizer": {
            "name": "AdamW",                       # the same keys as Optimizer (any registered optimizer)
            "momentum": 0.9,
            "nesterov": False,
            "beta1": 0.9,
            "multi_tensor": None,
            "weight_decay": 0.05,
            "lr": {
                "name": "CosineWarmup",
                "learning_rate": 1e-3,
                "warmup_steps": 30,
                "warmup_start_lr": 0.0,
                "end_lr": 0.0,
            },
        },
    },
}

#: The type of each key whose default is None (None is always accepted too): ``int``, ``float`` (an int is
#: accepted), ``str``, ``bool``, or ``("list", int | float)``. Every None default must be listed (tests/test_config.py).
NULLABLE_TYPES: Dict[str, Any] = {
    "Global.pretrained_model": str, "Global.checkpoints": str, "Global.amp": str, "Global.grad_clip": float,
    "Global.eval_max_series": int,
    "Data.pseudo_label_csv": str, "Data.cache_dir": str, "Data.index_file": str, "Data.max_slices": int,
    "Data.cache_size": int, "DataLoader.Eval.pad_to": int,
    "Arch.backbone.embed_dim": int, "Arch.backbone.depths": ("list", int), "Arch.backbone.num_heads": ("list", int),
    "Arch.backbone.stem_channels": ("list", int), "Arch.pretrained": str, "Arch.head_bias": ("list", float),
    "Ablation.row": str, "Ablation.adds": str, "Ablation.description": str, "Ablation.paper_log_loss": float,
    "Ensemble.tau_l": float, "SlicePretrain.output_dir": str, "Optimizer.multi_tensor": bool,
    "Infer.trt_max_slices": int, "Infer.trt_cache_dir": str,
    "SlicePretrain.Optimizer.multi_tensor": bool,
}

#: Sections (dotted paths) that accept arbitrary sub-keys.
OPEN_SECTIONS: tuple = ()
