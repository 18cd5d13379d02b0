"""Checkpoint formats: pretrained ε-networks in, a trained run out (docs/method.md §6).

    model, model_cfg = load_unet("ema_cifar10")                 # data/pretrained/ema_cifar10/…, offline
    model, model_cfg = load_unet("path/to/ckpt.pth")            # the DDIM code's [model, opt, epoch, step, ema]
    model, model_cfg = load_unet("path/to/ddpm-cifar10-32")     # a diffusers folder (config.json + weights)
    python -m lib.pretrained fetch ema_cifar10                  # the one step that uses the network
    python -m lib.pretrained export RUN_DIR OUT_DIR             # a run as a diffusers folder with a model card

Sources, in this order: an existing path (a file, a diffusers folder, or a lib.train run directory),
else a name of :data:`CHECKPOINTS` looked up under ``data/pretrained/``. Nothing is downloaded
implicitly; a missing file raises :class:`PretrainedMissing` saying what is missing, where to put it
and where to get it.

One concern per module: ``checkpoints`` (the named checkpoints, where they live, fetching), ``loading``
(state dicts into lib.unet.UNet, fine-tune starts), ``diffusers_format`` (UNet2DModel's config and
names), ``export`` (a run out to diffusers, with its model card), ``cli`` (the command line).
"""
from lib.infra.download import file_md5
from lib.pretrained.checkpoints import (CHECKPOINTS, PretrainedError, PretrainedMissing, download, expected_md5,
                                        fetch, pretrained_dir, resolve)
from lib.pretrained.cli import main
from lib.pretrained.loading import REFERENCE_GROUPS, infer_config, init_weights, load_state, load_unet

__all__ = ["CHECKPOINTS", "PretrainedMissing", "PretrainedError", "REFERENCE_GROUPS", "load_unet", "load_state",
           "infer_config", "init_weights", "file_md5", "download", "expected_md5", "fetch", "pretrained_dir", "resolve",
           "main"]
