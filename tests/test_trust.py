"""Issue 19 ("Trust every path in"): every way weights, caches, downloads and output roots enter the
project is checked before use, and bad input is one clear line. One section per numbered item."""
import json
import shutil

import pytest
import torch

from lib import pretrained
from lib.infra import rundir
from lib.infra.config import get_config


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """A finished two-step ci baseline run (a real lib.train run folder)."""
    from lib.train import train

    cfg = get_config("ci", ["train.steps=2", "train.ckpt_every=1", "train.log_every=1"])
    return train(cfg, "baseline", tmp_path_factory.mktemp("trust") / "src", progress=False).parent


def _copy(run, where):
    shutil.copytree(run, where, ignore=shutil.ignore_patterns(".lock"))
    return where


# ---------------------------------------------------------------------------- 1. one gate for a run's weights
def test_1_an_unfinished_extension_is_refused_by_the_pretrained_path(ci_run, tmp_path):
    run = _copy(ci_run, tmp_path / "run")
    c = json.loads((run / "config.json").read_text())
    c["train"]["steps"] = 40  # the extension to 40 steps was killed: final.pt still holds step 2
    (run / "config.json").write_text(json.dumps(c))
    for source in (run, run / "final.pt"):
        with pytest.raises(pretrained.PretrainedError, match="unfinished extension"):
            pretrained.load_unet(str(source))


def test_1_a_replaced_final_pt_is_refused(ci_run, tmp_path):
    run = _copy(ci_run, tmp_path / "run")
    sd = torch.load(run / "final.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in sd.items()}, run / "final.pt")  # another arm's weights, say
    for source in (run, run / "final.pt"):
        with pytest.raises(pretrained.PretrainedError, match="checksum"):
            pretrained.load_unet(str(source))
    from lib.unet import build_unet
    with pytest.raises(pretrained.PretrainedError, match="checksum"):
        pretrained.init_weights(build_unet(rundir.load_json(run / "config.json").model), str(run))
