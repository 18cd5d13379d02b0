"""The datasets a config may name, their channels and sizes, and the check that a model fits its data,
so that a config is refused before anything is built or loaded (lib.data loads the data)."""
from __future__ import annotations

from lib.infra.config_error import need

TOY_DATASETS = ("ring8", "grid25")
IMAGE_DATASETS = ("digits", "mnist", "cifar10", "celeba")
# (channels, training images) of every dataset (toy data are sampled: no fixed size; CelebA: partition 0
# of list_eval_partition.txt).
DATASETS = {"ring8": (2, 0), "grid25": (2, 0), "digits": (1, 1797), "mnist": (1, 5000), "cifar10": (3, 50_000),
            "celeba": (3, 162_770)}


def check_model_fits_data(cfg) -> None:
    """The model must fit the data it trains on (a lib.infra.config.Config ``cfg``): the dataset is known,
    MLP for toy data and UNet for images, channels and resolution agree, the batch fits the training set."""
    data, m, t = cfg.data, cfg.model, cfg.train
    need(data.dataset in DATASETS, f"data.dataset must be one of {', '.join(DATASETS)}, got {data.dataset!r}")
    need(data.n_train >= 0, f"data.n_train must be >= 0 (0 = all), got {data.n_train}")
    toy = data.dataset in TOY_DATASETS
    need(toy == (m.kind == "mlp"), f"data.dataset={data.dataset!r} needs model.kind={'mlp' if toy else 'unet'!r}, got "
         f"{m.kind!r} (2-D toy data train the MLP, images the UNet; lib.infra.config.toy_config(cfg) is a profile's toy experiment)")
    channels, n_images = DATASETS[data.dataset]
    need(m.in_channels == channels == m.out_ch, f"model.in_channels={m.in_channels} and model.out_ch={m.out_ch}, but "
         f"{data.dataset} has {channels} channel(s): set both to {channels}")
    if not toy:
        need(data.image_size == m.resolution, f"data.image_size={data.image_size} must equal model.resolution="
             f"{m.resolution} (the model trains and samples at one size): set both")
        need(m.resolution % 2 ** (len(m.ch_mult) - 1) == 0, f"model.resolution={m.resolution} must be divisible by "
             f"2^(len(model.ch_mult) - 1) = {2 ** (len(m.ch_mult) - 1)} (one halving per level)")
        n = min(n_images, data.n_train) if data.n_train > 0 else n_images
        need(t.batch_size <= n, f"train.batch_size={t.batch_size} exceeds the {n} training images of "
             f"{data.dataset} (data.n_train={data.n_train}): lower train.batch_size")
