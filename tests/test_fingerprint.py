"""What retrains: the recipe's fingerprint follows what a run computes, not the text of its files.

Each case edits a copy of lib/ and computes lib.recipe.training_code there (one subprocess for all
copies, so torch is imported once)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import json, sys
out = {}
for root in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "lib" or m.startswith("lib.")]:
        del sys.modules[m]
    sys.path.insert(0, root)
    from lib import recipe
    out[root] = {f"{k}/{a}": recipe.training_code(k, a) for k, a in (("unet", "s2dm"), ("mlp", "cdm"))}
    sys.path.remove(root)
print(json.dumps(out))
"""


def _edit(root: Path, rel: str, old: str, new: str, count: int = 1):
    p = root / rel
    text = p.read_text()
    assert text.count(old) >= count, f"{rel} no longer holds {old!r}: update this test's edit"
    p.write_text(text.replace(old, new, count))


def _comments_messages_cli(r):  # nothing a run computes
    _edit(r, "lib/train.py", "def _loop(", "# a comment in the runner\ndef _loop(")
    _edit(r, "lib/train.py", 'help="no progress bar"', 'help="no progress bar at all"')  # the command line
    _edit(r, "lib/train.py", "Lower train.lr, raise train.warmup", "Lower train.lr or raise train.warmup")  # a message
    _edit(r, "lib/train.py", 'runlog.append_row(out, {"step": done', 'runlog.append_row(out, {"step": int(done)')  # the log
    _edit(r, "lib/losses.py", "    if noise is None:\n", "    # why: a comment inside the loss\n    if noise is None:\n")
    _edit(r, "lib/losses.py", '"""L_0 = ', '"""The DDPM loss. L_0 = ')  # a docstring
    _edit(r, "lib/losses.py", 'f"tau must lie in [0, 1], got {tau}"', 'f"loss.tau must lie in [0, 1] (got {tau})"')
    _edit(r, "lib/recipe.py", 'f"unknown arm {arm!r}', 'f"no such arm {arm!r}')
    _edit(r, "lib/readers.py", "https://www.cs.toronto.edu/~kriz/", "https://example.org/cifar/")  # a URL in messages
    _edit(r, "lib/readers.py", "(the official train split is partition 0", "(the train split is partition 0")  # a warning
    _edit(r, "lib/readers.py", "def resolve_root(root) -> Path:", "def resolve_root(root: str) -> Path:")  # annotation


def _loss_computes_otherwise(r):
    _edit(r, "lib/losses.py", "return x.float().pow(2).flatten(1).mean(1)", "return x.float().pow(2).flatten(1).sum(1)")


def _data_order_otherwise(r):
    _edit(r, "lib/readers.py", "SHUFFLE_SEED = 0", "SHUFFLE_SEED = 1")


def _moved(r):  # sample_t moves from lib/losses.py to lib/schedule.py, imported back where it is used
    src = (r / "lib/losses.py").read_text()
    fn = re.search(r"\ndef sample_t\(.*?\n\n\n", src, re.S).group(0)
    (r / "lib/losses.py").write_text(src.replace(fn, "\n\n").replace(
        "from lib.schedule import Schedule", "from lib.schedule import Schedule, sample_t"))
    (r / "lib/schedule.py").write_text((r / "lib/schedule.py").read_text() + "\n" + fn)


def _mlp_edited(r):
    _edit(r, "lib/mlp.py", "def build_mlp(", "def _unused():\n    return 1\n\n\ndef build_mlp(")
    _edit(r, "lib/mlp.py", "    return ToyMLP(", "    _unused()\n    return ToyMLP(")


def _cdm_edited(r):
    _edit(r, "lib/related/cdm.py", "return l0 + lam * consistency", "return l0 + 2 * lam * consistency")


CASES = {"original": None, "comments": _comments_messages_cli, "loss": _loss_computes_otherwise,
         "data": _data_order_otherwise, "moved": _moved, "mlp": _mlp_edited, "cdm": _cdm_edited}


@pytest.fixture(scope="module")
def prints(tmp_path_factory):
    roots = {}
    for name, edit in CASES.items():
        r = tmp_path_factory.mktemp(name)
        shutil.copytree(ROOT / "lib", r / "lib", ignore=shutil.ignore_patterns("__pycache__"))
        if edit:
            edit(r)
        roots[name] = str(r)
    p = subprocess.run([sys.executable, "-c", _PROBE, *roots.values()], capture_output=True, text=True, check=True)
    got = json.loads(p.stdout)
    return {name: got[r] for name, r in roots.items()}


def test_comments_docstrings_messages_and_the_command_line_reuse_finished_runs(prints):
    assert prints["comments"] == prints["original"]


def test_a_change_to_what_the_loss_computes_retrains_and_names_it(prints):
    for run in ("unet/s2dm", "mlp/cdm"):
        old, new = prints["original"][run], prints["loss"][run]
        assert [k for k in old if old[k] != new[k]] == ["_per_sample_mean"]


def test_a_change_to_the_data_order_retrains(prints):
    assert prints["data"]["unet/s2dm"] != prints["original"]["unet/s2dm"]


def test_a_function_moved_to_another_module_does_not_retrain(prints):
    assert prints["moved"] == prints["original"]


def test_each_run_covers_its_own_network_and_arm_only(prints):
    o = prints["original"]
    assert prints["mlp"]["unet/s2dm"] == o["unet/s2dm"] and prints["mlp"]["mlp/cdm"] != o["mlp/cdm"]
    assert prints["cdm"]["unet/s2dm"] == o["unet/s2dm"] and prints["cdm"]["mlp/cdm"] != o["mlp/cdm"]
    assert {"s2dm_loss", "train_step", "EMA", "make_optimizer", "BatchSource", "UNet", "Schedule"} <= set(o["unet/s2dm"])
    assert {"ToyMLP", "cdm_loss", "s2dm_loss"} <= set(o["mlp/cdm"]) and "UNet" not in o["mlp/cdm"]
    assert not {"ToyMLP", "cdm_loss"} & set(o["unet/s2dm"])
    assert not {"main", "_loop", "_resume", "Config", "tqdm"} & set(o["unet/s2dm"])  # the runner, config, progress


def test_pieces_of_one_name_from_two_modules_keep_separate_entries():
    from lib import generate, train
    from lib.infra.fingerprint import recipe_fingerprint

    both = recipe_fingerprint([train.main, generate.main])
    assert "main" not in both and {"main/1", "main/2"} <= set(both)
    assert sorted([both["main/1"], both["main/2"]]) == sorted(
        [recipe_fingerprint([train.main])["main"], recipe_fingerprint([generate.main])["main"]])
