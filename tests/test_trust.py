"""Every way weights, caches, downloads and output roots enter the project is checked before use, and
bad input is one clear line (docs/method.md §8.4, one section per numbered guarantee)."""
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
def test_an_unfinished_extension_is_refused_by_the_pretrained_path(ci_run, tmp_path):
    run = _copy(ci_run, tmp_path / "run")
    c = json.loads((run / "config.json").read_text())
    c["train"]["steps"] = 40  # the extension to 40 steps was killed: final.pt still holds step 2
    (run / "config.json").write_text(json.dumps(c))
    for source in (run, run / "final.pt"):
        with pytest.raises(pretrained.PretrainedError, match="unfinished extension"):
            pretrained.load_unet(str(source))


def test_a_replaced_final_pt_is_refused(ci_run, tmp_path):
    run = _copy(ci_run, tmp_path / "run")
    sd = torch.load(run / "final.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in sd.items()}, run / "final.pt")  # another arm's weights, say
    for source in (run, run / "final.pt"):
        with pytest.raises(pretrained.PretrainedError, match="checksum"):
            pretrained.load_unet(str(source))
    from lib.unet import build_unet
    with pytest.raises(pretrained.PretrainedError, match="checksum"):
        pretrained.init_weights(build_unet(rundir.load_json(run / "config.json").model), str(run))


# ---------------------------------------------------------------------------- 2. the classifier cache
def test_the_classifier_cache_is_keyed_by_code_and_rebuilt_when_torn(tmp_path, monkeypatch):
    from lib.measure import classifier

    cfg = get_config("ci", ["eval.classifier_steps=2"])
    cache = tmp_path / "cls"
    classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    key = classifier.classifier_key(cfg.data, cfg.eval)
    pt, js = cache / f"{key}.pt", cache / f"{key}.json"
    t0 = pt.stat().st_mtime_ns
    classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    assert pt.stat().st_mtime_ns == t0  # same code and config: reused
    # other classifier code (e.g. another learning rate): rebuilt, saying why
    monkeypatch.setattr(classifier, "classifier_code", lambda: {"lib/measure/classifier.py": "other"})
    with pytest.warns(UserWarning, match="other classifier code"):
        classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    assert json.loads(js.read_text())["code"] == {"lib/measure/classifier.py": "other"}
    # a torn cache: rebuilt, saying why
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        m = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    assert m.meta["key"] == key and torch.load(pt, weights_only=True)


def test_a_garbage_reference_npz_is_one_line_naming_the_file(tmp_path):
    from lib.experiment import evaluate
    from lib.infra.paths import Paths

    P = Paths("ci", tmp_path)
    ref = P.runs / "features" / "reference.npz"
    ref.parent.mkdir(parents=True)
    ref.write_bytes(b"\x93NUMPY garbage" * 10)
    with pytest.raises(ValueError) as e:
        evaluate.load_reference(P)
    msg = str(e.value)
    assert str(ref) in msg and "04_sampler_sweeps" in msg and "allow_pickle" not in msg and "\n" not in msg


# ---------------------------------------------------------------------------- 3./4. fine-tunes
def _ft_cfg(steps=2, seed=0):
    return get_config("ci", [f"train.steps={steps}", "train.ckpt_every=1", "train.log_every=1", f"train.seed={seed}"])


def test_a_fine_tune_of_a_retrained_source_is_moved_aside_not_refused(tmp_path):
    from lib.train import train

    src = train(_ft_cfg(), "baseline", tmp_path / "baseline", progress=False).parent
    ft = train(_ft_cfg(), "s2dm", tmp_path / "pretrained" / "s2dm", progress=False, init_from=str(src)).parent
    old_md5 = json.loads((ft / "run.json").read_text())["init_from"]["md5"]
    shutil.rmtree(src)  # the baseline is retrained (here: another seed)
    train(_ft_cfg(seed=1), "baseline", src, progress=False)
    with pytest.warns(UserWarning, match="initial weights .* changed"):
        train(_ft_cfg(), "s2dm", ft, progress=False, init_from=str(src))
    rec = json.loads((ft / "run.json").read_text())["init_from"]
    assert rec["md5"] == pretrained.file_md5(src / "final.pt") != old_md5
    assert len(list((ft / "superseded").glob("*/final.pt"))) == 1
    # another source is still refused: a folder holds one fine-tune
    other = train(_ft_cfg(seed=2), "baseline", tmp_path / "other", progress=False).parent
    from lib.infra.config import ConfigError
    with pytest.raises(ConfigError, match="another --out"):
        train(_ft_cfg(), "s2dm", ft, progress=False, init_from=str(other))


def test_resuming_a_fine_tune_without_init_from_keeps_its_provenance(tmp_path):
    from lib.train import train

    src = train(_ft_cfg(), "baseline", tmp_path / "baseline", progress=False).parent
    ft = train(_ft_cfg(), "s2dm", tmp_path / "ft", progress=False, init_from=str(src)).parent
    rec = json.loads((ft / "run.json").read_text())["init_from"]
    train(_ft_cfg(steps=3), "s2dm", ft, progress=False)  # an extension, resumed without --init-from
    assert json.loads((ft / "run.json").read_text())["init_from"] == rec
    train(_ft_cfg(steps=3), "s2dm", ft, progress=False, init_from=str(src))  # the right command is accepted


# ---------------------------------------------------------------------------- 5. a relative output root
def test_a_relative_output_root_is_resolved_once_in_the_caller(tmp_path, monkeypatch):
    from lib.experiment import runs
    from lib.infra.paths import Paths

    monkeypatch.chdir(tmp_path)
    P = Paths("ci", "relout")
    assert P.root == tmp_path / "relout" and P.runs.is_relative_to(tmp_path / "relout")
    monkeypatch.chdir("/")  # a worker runs elsewhere (lib.infra.processes: from the repository)
    assert P.run("images/s2dm") == tmp_path / "relout" / "data" / "runs" / "ci" / "images" / "s2dm"
    job = runs.Job(get_config("ci"), "s2dm", runs.image_run(P, "s2dm"))
    sent = {}

    def record(fn, calls, workers, **kw):
        sent.update(calls)
        return {}, []
    monkeypatch.setattr(runs, "call_in_workers", record)
    runs.train_parallel({"a": job, "b": runs.Job(job.cfg, "baseline", runs.image_run(P, "baseline"))}, workers=2,
                        progress=False)
    assert sent["a"]["out"] == str(tmp_path / "relout" / "data" / "runs" / "ci" / "images" / "s2dm")


def test_make_hands_run_notebook_an_absolute_root():
    import subprocess

    from lib.infra.paths import ROOT
    r = subprocess.run(["make", "-n", "--no-print-directory", "PROFILE=ci", "ROOT_OUT=relout", "PY=python",
                        "relout/figures/ci/01_noise_schedule.ipynb"], cwd=ROOT, capture_output=True, text=True)
    assert f"--root {ROOT / 'relout'}" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------------------- 9. notebook 03 re-runs when its runs go
def test_deleting_a_runs_folder_makes_make_run_03_again(tmp_path):
    import subprocess

    from lib.infra.paths import ROOT, Paths, write_notebook_marker
    P = Paths("ci", tmp_path)
    (P.runs / "images" / "s2dm").mkdir(parents=True)
    (P.runs / "images" / "s2dm" / "final.pt").write_text("x")
    written = (P.runs / "images" / "s2dm" / "final.pt").stat().st_mtime  # a file timestamp, not a duration
    marker = write_notebook_marker(P, "03_train", written - 1)
    assert marker.read_text().split() == ["images"]
    later = write_notebook_marker(P, "03_train", written + 3600)  # nothing new since: the old marker's folder kept
    assert later.read_text().split() == ["images"]
    executed = tmp_path / "figures" / "ci" / "03_train.ipynb"
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")  # newer than every source
    args = ["make", "--no-print-directory", "-q", "PROFILE=ci", f"ROOT_OUT={tmp_path}", f"PY={ROOT}/.venv/bin/python",
            str(executed)]
    assert subprocess.run(args, cwd=ROOT).returncode == 0  # up to date
    shutil.rmtree(P.runs / "images")  # data/runs/ci/images deleted, the marker kept
    assert subprocess.run(args, cwd=ROOT).returncode == 1  # out of date: make re-runs 03


# ---------------------------------------------------------------------------- 6. a full disk, whatever raises it
def _torch_disk_full(*a, **k):
    raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: "
                       "PytorchStreamWriter failed writing file data/0: file write failed (No space left on device)")


def test_torch_s_runtime_error_is_a_disk_full_line(tmp_path, monkeypatch):
    from lib.infra import checkpoint as ckpt

    monkeypatch.setattr(torch, "save", _torch_disk_full)
    with pytest.raises(ckpt.DiskFull, match="Free space there"):
        ckpt.atomic_save({"w": torch.zeros(3)}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_a_full_disk_during_a_checkpoint_write_is_one_line(tmp_path, monkeypatch, capsys):
    from lib import train as T

    monkeypatch.setattr(torch, "save", _torch_disk_full)
    assert T.main(["--profile", "ci", "--arm", "s2dm", "--out", str(tmp_path / "r"), "--quiet",
                   "--set", "train.steps=2", "--set", "train.ckpt_every=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left") and err.count("\n") == 1 and "Traceback" not in err


def test_generate_refuses_a_disk_too_small_before_sampling(ci_run, tmp_path, monkeypatch, capsys):
    import collections

    from lib import generate
    from lib.infra import checkpoint as ckpt

    monkeypatch.setattr(generate, "generate", lambda *a, **k: pytest.fail("sampled onto a full disk"))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    assert generate.main(["--run-dir", str(ci_run), "--out", str(tmp_path / "s.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space for the samples") and "Free" in err and err.count("\n") == 1


def test_a_disk_filling_at_the_final_write_is_one_line(ci_run, tmp_path, monkeypatch, capsys):
    from lib import generate

    monkeypatch.setattr(torch, "save", _torch_disk_full)
    assert generate.main(["--run-dir", str(ci_run), "--out", str(tmp_path / "s.pt"), "--quiet", "-n", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left") and err.count("\n") == 1


def test_finished_samples_are_kept_when_the_destination_disk_fills(ci_run, tmp_path, monkeypatch, capsys):
    import tempfile

    from lib import generate

    import errno

    from lib.infra import checkpoint as ckpt

    real_save = ckpt.atomic_save

    def save(obj, path, *a, **k):  # only the destination's disk is full
        if "full-disk" in str(path):
            raise ckpt.DiskFull(errno.ENOSPC, f"no space left on the disk of {path}")
        return real_save(obj, path, *a, **k)

    (tmp_path / "full-disk").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.setattr(ckpt, "atomic_save", save)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "other"))
    out = tmp_path / "full-disk" / "s.pt"
    assert generate.main(["--run-dir", str(ci_run), "--out", str(out), "--quiet", "-n", "4"]) == 2
    err = capsys.readouterr().err
    kept = list((tmp_path / "other").glob("s2dm-rescued-*-s.pt"))
    assert err.count("\n") == 1 and "finished samples are kept in" in err and len(kept) == 1
    assert torch.load(kept[0], weights_only=True).shape[0] == 4 and not out.exists()


# ---------------------------------------------------------------------------- 7. downloads
def test_an_html_error_page_is_not_installed(tmp_path):
    page = tmp_path / "error.html"
    page.write_text("<html>404 Not Found</html>")  # 27 bytes, served with status 200 by a broken mirror
    for kind in ("torch", "npz"):
        dest = tmp_path / "inst" / f"w.{kind}"
        with pytest.raises(pretrained.PretrainedError, match="HTML"):
            pretrained.download(page.as_uri(), dest, None, kind=kind)
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    small = tmp_path / "small.bin"
    small.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(pretrained.PretrainedError, match="fewer than"):
        pretrained.download(small.as_uri(), tmp_path / "inst" / "w.pt", None, kind="torch")


def test_an_html_file_installed_earlier_is_fetched_again(tmp_path, capsys):
    from lib.experiment import fetch

    w = tmp_path / "inception-2015-12-05.pt"
    w.write_text("<html>error</html>")
    assert fetch._in_place(w, "torch") is False and not w.exists()
    assert "downloading it again" in capsys.readouterr().err


def test_a_cut_transfer_is_removed_and_one_line(tmp_path, monkeypatch):
    import http.client
    import io

    from lib.infra import download

    class Cut(io.BytesIO):
        headers = {"Content-Length": "3000000"}

        def read(self, n=-1):
            if self.tell() >= 1000:
                raise http.client.IncompleteRead(b"", 2999000)
            return super().read(1000)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Cut(b"PK" * 1500000))
    dest = tmp_path / "w.pt"
    with pytest.raises(pretrained.PretrainedMissing, match="IncompleteRead.*nothing was kept"):
        pretrained.download("https://example.invalid/w.pt", dest, None, kind="torch")
    assert list(tmp_path.iterdir()) == []

    class Short(Cut):  # the server closes the connection early without an error
        def read(self, n=-1):
            return io.BytesIO.read(self, 1000) if self.tell() < 2000 else b""

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Short(b"PK" * 1500000))
    with pytest.raises(pretrained.PretrainedMissing, match="stopped after 2000 of 3000000"):
        pretrained.download("https://example.invalid/w.pt", dest, None, kind="torch")
    assert list(tmp_path.iterdir()) == []


def test_a_hub_fetch_without_network_is_one_line(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(pretrained.PretrainedMissing, match="with network"):
        pretrained.fetch("google/ddpm-cifar10-32", tmp_path)
    assert pretrained.main(["fetch", "google/ddpm-cifar10-32", "--root", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------- 8. crafted pretrained files
def test_a_zip_bomb_is_refused_from_its_metadata(tmp_path, monkeypatch):
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB of zeros from a ~64 KB file
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("inflated before the size check"))
    with pytest.raises(pretrained.PretrainedError, match="torch.save never compresses"):
        pretrained.load_unet(str(bomb))


def test_a_state_dict_claiming_huge_channels_is_refused_before_allocating(tmp_path, monkeypatch):
    sd = {"conv_in.weight": torch.zeros(8192, 3, 3, 3), "conv_out.weight": torch.zeros(3, 8192, 3, 3),
          "down.0.block.0.conv1.weight": torch.zeros(8192, 1, 1, 1), "down.0.attn.0.q.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "crafted.ckpt")
    from lib.pretrained import loading

    real_build = loading._build

    def guarded(cfg, groups):
        if torch.empty(0).device.type != "meta" and cfg.ch > 1024:
            pytest.fail(f"allocated a {cfg.ch}-channel model before checking the weights")
        return real_build(cfg, groups)

    monkeypatch.setattr(loading, "_build", guarded)
    with pytest.raises(pretrained.PretrainedError, match="do not fit"):
        pretrained.load_unet(str(tmp_path / "crafted.ckpt"))


GOOD_CONFIG = dict(_class_name="UNet2DModel", sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                   block_out_channels=[128, 256, 256, 256],
                   down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], freq_shift=1,
                   flip_sin_to_cos=False, downsample_padding=0, norm_eps=1e-6, norm_num_groups=32,
                   attention_head_dim=None, dropout=0.0)
BAD_CONFIGS = [
    ('{"sample_size": 32, "in_ch', "not valid JSON"),  # a truncated download
    ("[1, 2, 3]", "not a JSON object"),
    (dict(GOOD_CONFIG, block_out_channels="abc"), "block_out_channels"),
    (dict(GOOD_CONFIG, block_out_channels=[128, "x", 256, 256]), "block_out_channels"),
    (dict(GOOD_CONFIG, block_out_channels=[1 << 20] * 4), "block_out_channels"),
    (dict(GOOD_CONFIG, block_out_channels=[]), "block_out_channels"),
    (dict(GOOD_CONFIG, sample_size=-1), "sample_size"),
    (dict(GOOD_CONFIG, sample_size="32"), "sample_size"),
    (dict(GOOD_CONFIG, in_channels=3.5), "in_channels"),
    (dict(GOOD_CONFIG, layers_per_block="2"), "layers_per_block"),
    (dict(GOOD_CONFIG, layers_per_block=10**9), "layers_per_block"),
    (dict(GOOD_CONFIG, down_block_types=5), "down_block_types"),
    (dict(GOOD_CONFIG, up_block_types=[None] * 4), "up_block_types"),
    (dict(GOOD_CONFIG, norm_eps="x"), "norm_eps"),
    (dict(GOOD_CONFIG, attention_head_dim=[8]), "attention_head_dim"),
    (dict(GOOD_CONFIG, dropout=[0.1]), "dropout"),
    ({k: v for k, v in GOOD_CONFIG.items() if k != "block_out_channels"}, "no field 'block_out_channels'"),
]


@pytest.mark.parametrize("config,match", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_malformed_diffusers_configs_are_one_line(tmp_path, config, match):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(pretrained.PretrainedError, match=match) as e:
        pretrained.load_unet(str(folder))
    assert "config.json" in str(e.value) and "\n" not in str(e.value)


def test_safetensors_without_the_package_is_one_line(tmp_path, monkeypatch):
    import sys

    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(GOOD_CONFIG))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(pretrained.PretrainedError, match="pip install -r requirements.txt"):
        pretrained.load_unet(str(folder))
    from lib.infra.paths import ROOT
    assert "safetensors==" in (ROOT / "requirements.txt").read_text()


# ---------------------------------------------------------------------------- 9. messages
class _Foreign:  # a class torch's weights_only unpickler refuses
    pass


def test_a_refused_pickle_is_our_message_not_torch_s_advice(tmp_path):
    from lib.infra import checkpoint as ckpt

    torch.save({"w": torch.zeros(2), "x": _Foreign()}, tmp_path / "foreign.pt")
    for load, err in ((pretrained.load_unet, pretrained.PretrainedError), (ckpt.safe_load, ckpt.CheckpointError)):
        with pytest.raises(err) as e:
            load(tmp_path / "foreign.pt")
        msg = str(e.value)
        assert "could run code" in msg and "weights_only=False" not in msg and str(tmp_path / "foreign.pt") in msg


def test_another_profile_on_a_run_folder_is_refused_with_the_differing_keys(ci_run, tmp_path):
    from lib.infra.config import ConfigError
    from lib.train import train

    run = _copy(ci_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="profile 'ci', not 'cpu'.*model") as e:
        train(get_config("cpu"), "baseline", run, progress=False)
    assert "definition" not in str(e.value)
    assert not (run / "superseded").exists() and (run / "final.pt").exists()  # nothing moved aside


def test_a_torn_loss_csv_is_one_line_and_resume_drops_the_torn_row(ci_run, tmp_path, capsys):
    from lib import train as T
    from lib.infra import runlog

    run = _copy(ci_run, tmp_path / "run")
    log = run / "loss.csv"
    log.write_text(log.read_text() + "3,0.5")  # killed mid-append
    with pytest.raises(runlog.LogError, match="loss.csv is torn"):
        runlog.read_log(run)
    assert T.main(["--profile", "ci", "--arm", "baseline", "--out", str(run), "--quiet", "--set", "train.steps=3",
                   "--set", "train.ckpt_every=1", "--set", "train.log_every=1"]) == 0
    assert runlog.read_log(run)["step"] == [1.0, 2.0, 3.0]


def test_an_invalid_final_json_in_generate_is_one_line(ci_run, tmp_path, capsys):
    from lib import generate

    run = _copy(ci_run, tmp_path / "run")
    (run / "final.json").write_text('{"step": 2, "arm"')
    assert generate.main(["--run-dir", str(run), "--out", str(tmp_path / "s.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "final.json is not valid JSON" in err and err.count("\n") == 1


def test_notebook_parameters_of_the_wrong_type_are_one_line():
    from lib.infra.config import ConfigError
    from lib.infra.paths import Paths

    with pytest.raises(ValueError, match="root=5 must be a folder path"):
        Paths("ci", 5)
    with pytest.raises(ValueError, match="profile=3 must be a profile name"):
        Paths(3)
    with pytest.raises(ConfigError, match="unknown profile"):
        get_config(["ci"])


def test_a_failed_html_export_publishes_nothing_and_stays_not_done(tmp_path, monkeypatch, capsys):
    import importlib.util

    import nbconvert
    import nbformat

    from lib.infra.paths import ROOT
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
    rn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rn)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "ci"\nroot = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from lib.infra import paths\nfrom lib.experiment import report\n"
        "report.save_table([{'a': 1}], paths.Paths(profile, root or None).figures, '99_table')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "99_probe.ipynb")

    def broken(self, *a, **k):
        raise RuntimeError("template not found")

    monkeypatch.setattr(nbconvert.HTMLExporter, "from_notebook_node", broken)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with pytest.raises(SystemExit) as e:
        rn.run(tmp_path / "99_probe.ipynb", "ci", tmp_path / "out", html=True)
    assert e.value.code == 1
    figures = tmp_path / "out" / "figures" / "ci"
    assert not (figures / "99_probe.ipynb").exists() and not (figures / "99_table.csv").exists()
    err = capsys.readouterr().err
    assert "HTML export failed" in err and "template not found" in err


def test_gpu_check_with_an_unwritable_out_is_one_line_before_measuring(tmp_path, monkeypatch, capsys):
    import importlib.util

    from lib.infra.paths import ROOT
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as when run as a script: bench/machine.py beside it
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "gpu_check", gc)  # dataclasses look their module up
    spec.loader.exec_module(gc)
    monkeypatch.setattr(gc, "run_sections", lambda *a, **k: pytest.fail("measured before checking --out"))
    (tmp_path / "afile").write_text("")
    assert gc.main(["--dry-run", "--out", str(tmp_path / "afile" / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1


def test_a_worker_command_with_a_relative_path_is_refused_before_it_starts():
    import sys

    from lib.experiment import runs
    from lib.experiment.workers import call_in_workers
    from lib.infra import processes
    with pytest.raises(ValueError, match="'relout/run' is relative"):
        processes.run_parallel({"a": [sys.executable, "-m", "lib.train", "--out", "relout/run"]}, 1, progress=False)
    with pytest.raises(ValueError, match="'relout/run' is relative"):
        call_in_workers(runs.train_job, {"a": {"config": {}, "arm": "s2dm", "out": "relout/run"}}, 2, progress=False)
