"""The hostile round (issue 28): every way weights, caches, downloads, output roots, configurations and
interruptions reach the project, each tried with a fault. A probe ends OK (the right result, nothing lost)
or *clear*: one line naming the file and the fix, no raw traceback, no silent result, and no code run
from a file (every crafted pickle writes a marker file when unpickled; the marker must never appear).

The probes are data: :data:`PROBES`, one :class:`Probe` per (surface, fault, what the project does),
filled by the ``@probe`` decorator and run by one parametrised test. ``scripts/probe_table.py`` writes
the table of docs/troubleshooting.md from the same list, and :func:`test_the_troubleshooting_table_is_the_probe_list`
fails when the two differ. To add a probe (a new surface too: ``@probe("preflight", ...)``), write a
function ``p_<id>(h)`` under the decorator and run ``python scripts/probe_table.py``.

Sizes are profile ``ci`` (2-step runs); subprocesses only where a signal or a fresh interpreter is the point.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CI_SETS = ["train.steps=2", "train.ckpt_every=1", "train.log_every=1"]
SURFACES = ("weights in", "weights out", "caches and provenance", "roots and disks", "fetch",
            "preflight and rehearsal", "configuration and CLIs", "interruption", "first cell")


# ============================================================================ the probe list
@dataclass(frozen=True)
class Probe:
    id: str
    surface: str
    fault: str
    expected: str  # what the project does (the troubleshooting table's third column)
    fn: Callable


PROBES: list[Probe] = []


def probe(surface: str, fault: str, expected: str):
    """Register ``p_<id>(h)`` as a probe of ``surface``."""
    def deco(fn):
        assert fn.__name__.startswith("p_"), fn.__name__
        PROBES.append(Probe(fn.__name__[2:], surface, fault, expected, fn))
        return fn
    return deco


# ============================================================================ what "clear" means
def one_line(text, *needles) -> str:
    """``text`` is one non-empty line, without a traceback, containing every needle."""
    text = str(text)
    assert "Traceback" not in text, f"a raw traceback:\n{text}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"not one line ({len(lines)}):\n{text}"
    for n in needles:
        assert str(n) in lines[0], f"{str(n)!r} is not in the message: {lines[0]}"
    return lines[0]


def error_line(err: str, *needles) -> str:
    """A command's stderr: no traceback, exactly one ``error:`` line, which contains every needle
    (progress, warnings and 'downloading …' lines may stand beside it)."""
    assert "Traceback" not in err, f"a raw traceback:\n{err}"
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"not one error line:\n{err}"
    return one_line(errors[0], *needles)


# ============================================================================ crafted files
class _Payload:
    """Unpickled, it writes ``marker``: the stand-in for any code a file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB of zeros from ~64 KB
    return path


def safetensors_claiming(path: Path, shape, header_len: int | None = None) -> Path:
    """A .safetensors file whose header declares a tensor of ``shape`` (float32) over 16 bytes of data."""
    header = json.dumps({"conv_in.weight": {"dtype": "F32", "shape": list(shape),
                                            "data_offsets": [0, 4 * int(torch.Size(shape).numel())]}}).encode()
    n = len(header) if header_len is None else header_len
    path.write_bytes(n.to_bytes(8, "little") + header + b"\0" * 16)
    return path


GOOD_DIFFUSERS = dict(_class_name="UNet2DModel", sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=[32, 32], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "UpBlock2D"], freq_shift=1, flip_sin_to_cos=False,
                      downsample_padding=0, norm_eps=1e-6, norm_num_groups=32, attention_head_dim=None, dropout=0.0)


def diffusers_folder(where: Path, weights_name: str, content: bytes | None = None, config=None) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.json").write_text(json.dumps(config or GOOD_DIFFUSERS))
    if content is not None:
        (where / weights_name).write_bytes(content)
    return where


# ============================================================================ shared runs (built once per module)
@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """A finished two-step ci baseline run (checkpoints at steps 1 and 2)."""
    from lib.infra.config import get_config
    from lib.train import train

    return train(get_config("ci", CI_SETS), "baseline", tmp_path_factory.mktemp("hostile") / "ci", progress=False).parent


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A two-step ci run of widths 128 (32 GroupNorm groups everywhere): one diffusers can represent."""
    from lib.infra.config import get_config
    from lib.train import train

    cfg = get_config("ci", ["train.steps=2", "model.ch=128", "model.ch_mult=[1,1]"])
    return train(cfg, "baseline", tmp_path_factory.mktemp("hostile") / "wide", progress=False).parent


@pytest.fixture(scope="module")
def ref4(tmp_path_factory):
    """An uninterrupted four-step ci run: what every interrupted-then-resumed one must equal."""
    from lib.infra.config import get_config
    from lib.train import train

    cfg = get_config("ci", ["train.steps=4", "train.ckpt_every=1", "train.log_every=1"])
    return train(cfg, "baseline", tmp_path_factory.mktemp("hostile") / "ref4", progress=False).parent


class Harness:
    """What a probe gets: a fresh folder, monkeypatch, the shared runs, a marker, and ways to call."""

    def __init__(self, request, tmp: Path, monkeypatch, capsys):
        self.request, self.tmp, self.mp, self.capsys = request, tmp, monkeypatch, capsys
        self.marker = tmp / "CODE-RAN"

    def payload(self):
        return _Payload(self.marker)

    def run(self, name: str = "ci_run") -> Path:
        """A private copy of a shared run."""
        src = self.request.getfixturevalue(name)
        return Path(shutil.copytree(src, self.tmp / f"{name}-copy", ignore=shutil.ignore_patterns(".lock")))

    def call(self, main, *args):
        """``(status, stdout, stderr)`` of a command's ``main(argv)`` in this process (an exception escaping
        it is a raw traceback: the probe fails)."""
        self.capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
        c = self.capsys.readouterr()
        return rc, c.out, c.err

    def refused(self, exc, fn, *needles) -> str:
        with pytest.raises(exc) as e:
            fn()
        return one_line(e.value, *needles)

    def offline(self):
        """No network: every connection attempt fails as an unplugged cable does."""
        import socket

        def unreachable(*a, **k):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        self.mp.setattr(socket.socket, "connect", unreachable)
        self.mp.setattr(socket, "create_connection", unreachable)
        self.mp.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(
            socket.gaierror(-3, "Temporary failure in name resolution")))

    @contextlib.contextmanager
    def small_disk(self, size="4m"):
        """A folder on a disk that fills: a tmpfs of ``size`` where this process may mount one (root),
        else None (the probe then stubs ENOSPC)."""
        where = self.tmp / "disk"
        where.mkdir()
        mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0
        try:
            yield where if mounted else None
        finally:
            if mounted:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file (deleted to free the space)."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        free = shutil.disk_usage(disk).free - leave
        while free > 0:
            try:
                f.write(b"\0" * min(free, 1 << 20))
                f.flush()
            except OSError:
                break
            free = shutil.disk_usage(disk).free - leave
    return filler


def enospc(path="file"):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def forge_final(run: Path, content: bytes) -> None:
    """Replace ``final.pt`` and make final.json name its checksum (what an attacker with the folder can do)."""
    from lib.infra import checkpoint as ckpt

    (run / "final.pt").write_bytes(content)
    meta = json.loads((run / "final.json").read_text())
    meta["sha256"] = ckpt.sha256(run / "final.pt")
    (run / "final.json").write_text(json.dumps(meta))


def extend_config(run: Path, steps: int = 40) -> None:
    """The run's config now asks for more steps, as an extension killed before it finished leaves it."""
    c = json.loads((run / "config.json").read_text())
    c["train"]["steps"] = steps
    (run / "config.json").write_text(json.dumps(c))


def train_main():
    from lib import train
    return train.main


def generate_main():
    from lib import generate
    return generate.main


def pretrained_main():
    from lib import pretrained
    return pretrained.main


def ci_args(out, *sets, arm="baseline"):
    return ["--profile", "ci", "--arm", arm, "--out", out, "--quiet",
            *[a for s in (*CI_SETS, *sets) for a in ("--set", s)]]


def PE():
    from lib import pretrained
    return pretrained.PretrainedError


# ============================================================================ weights in
@probe("weights in", "an HTML error page saved as `model.pt`",
       "refused: one line naming the file as an HTML page, not a checkpoint; fetch it again")
def p_wi_html_pt(h):
    from lib import pretrained
    (h.tmp / "model.pt").write_bytes(HTML)
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), h.tmp / "model.pt", "HTML", "fetch it again")


@probe("weights in", "an empty `model.ckpt`", "refused: one line naming the file (empty), delete it and fetch it again")
def p_wi_empty_ckpt(h):
    from lib import pretrained
    (h.tmp / "model.ckpt").write_bytes(b"")
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.ckpt"), h.tmp / "model.ckpt", "fetch it again")


@probe("weights in", "a checkpoint cut in half (a torn download)",
       "refused: one line naming the file as truncated, fetch it again")
def p_wi_truncated_pt(h):
    from lib import pretrained
    whole = (h.run() / "final.pt").read_bytes()
    (h.tmp / "model.pt").write_bytes(whole[: len(whole) // 2])
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), h.tmp / "model.pt", "fetch it again")


@probe("weights in", "a zip bomb as `model.pt` (64 MiB of zeros in a 64 KB file)",
       "refused from the archive's metadata before anything is inflated")
def p_wi_zip_bomb(h):
    from lib import pretrained
    zip_bomb(h.tmp / "model.pt")
    h.mp.setattr(torch, "load", lambda *a, **k: pytest.fail("inflated before the size check"))
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), h.tmp / "model.pt", "torch.save never compresses")


@probe("weights in", "a state dict declaring 8,192-channel layers (`.ckpt`)",
       "refused before the model is allocated: the weights do not fit, naming the shapes")
def p_wi_huge_channels(h):
    from lib import pretrained
    sd = {"conv_in.weight": torch.zeros(8192, 3, 3, 3), "conv_out.weight": torch.zeros(3, 8192, 3, 3),
          "down.0.block.0.conv1.weight": torch.zeros(8192, 1, 1, 1), "down.0.attn.0.q.weight": torch.zeros(1)}
    torch.save(sd, h.tmp / "model.ckpt")
    from lib.pretrained import loading
    real = loading._build

    def guarded(cfg, groups):
        if torch.empty(0).device.type != "meta" and cfg.ch > 1024:
            pytest.fail(f"allocated a {cfg.ch}-channel model before checking the weights")
        return real(cfg, groups)
    h.mp.setattr(loading, "_build", guarded)
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.ckpt"), "do not fit")


@probe("weights in", "a `.safetensors` header declaring a 2^40-element tensor over 16 bytes",
       "refused: one line naming the file, fetch the folder again (nothing allocated)")
def p_wi_safetensors_huge_shape(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "x")
    safetensors_claiming(d / "diffusion_pytorch_model.safetensors", (1 << 20, 1 << 20))
    h.refused(PE(), lambda: pretrained.load_unet(d), d / "diffusion_pytorch_model.safetensors", "fetch the folder again")


@probe("weights in", "a `.safetensors` header length of 2^62 bytes",
       "refused: one line naming the file, fetch the folder again")
def p_wi_safetensors_huge_header(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "x")
    safetensors_claiming(d / "diffusion_pytorch_model.safetensors", (2, 2), header_len=1 << 62)
    h.refused(PE(), lambda: pretrained.load_unet(d), d / "diffusion_pytorch_model.safetensors", "fetch the folder again")


@probe("weights in", "an HTML page as a diffusers folder's `.safetensors`",
       "refused: one line naming the file, fetch the folder again")
def p_wi_html_safetensors(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "diffusion_pytorch_model.safetensors", HTML)
    h.refused(PE(), lambda: pretrained.load_unet(d), d / "diffusion_pytorch_model.safetensors", "fetch")


@probe("weights in", "an HTML page as a diffusers folder's `.bin`",
       "refused: one line naming the file as an HTML page; fetch it again")
def p_wi_html_bin(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "diffusion_pytorch_model.bin", HTML)
    h.refused(PE(), lambda: pretrained.load_unet(d), d / "diffusion_pytorch_model.bin", "HTML", "fetch it again")


@probe("weights in", "a diffusers `config.json` declaring widths of 2^20 channels",
       "refused from config.json's field before anything is built")
def p_wi_diffusers_huge_widths(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "diffusion_pytorch_model.bin", b"never read",
                         config=dict(GOOD_DIFFUSERS, block_out_channels=[1 << 20] * 2))
    h.refused(PE(), lambda: pretrained.load_unet(d), d / "config.json", "block_out_channels", "fix the file")


@probe("weights in", "a directory where a diffusers folder's weights file should be",
       "refused: the folder has no weights file, one line naming it")
def p_wi_weights_file_is_dir(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "x")
    (d / "diffusion_pytorch_model.safetensors").mkdir()
    h.refused(PE(), lambda: pretrained.load_unet(d), d, "no diffusion_pytorch_model.safetensors")


@probe("weights in", "a directory named `model.pt`", "refused: a folder that is neither a diffusers model nor a run")
def p_wi_pt_is_dir(h):
    from lib import pretrained
    (h.tmp / "model.pt").mkdir()
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), h.tmp / "model.pt", "neither")


@probe("weights in", "a run folder whose `final.pt` is a directory (`load_unet`, `lib.generate`)",
       "refused: one line naming final.pt, run the training command again")
def p_wi_final_is_dir(h):
    from lib import pretrained
    run = h.run()
    (run / "final.pt").unlink()
    (run / "final.pt").mkdir()
    h.refused(PE(), lambda: pretrained.load_unet(run), run / "final.pt", "training command")
    rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet")
    assert rc == 2
    error_line(err, "final.pt", "training command")


@probe("weights in", "a run folder without `final.pt` (training not finished) through `load_unet`",
       "refused: the run has not finished, train it to the end (not read as a diffusers folder)")
def p_wi_run_without_final(h):
    from lib import pretrained
    run = h.run()
    (run / "final.pt").unlink()
    msg = h.refused(PE(), lambda: pretrained.load_unet(run), run, "no finished run", "train it first")
    assert "UNet2DModel" not in msg and "diffusers" not in msg


@probe("weights in", "`final.pt` replaced by other weights (`load_unet` of the run and of the file)",
       "refused: final.pt does not match the checksum in final.json")
def p_wi_replaced_final(h):
    from lib import pretrained
    run = h.run()
    sd = load(run / "final.pt")
    torch.save({k: v + 1 for k, v in sd.items()}, run / "final.pt")
    for source in (run, run / "final.pt"):
        h.refused(PE(), lambda: pretrained.load_unet(source), "checksum", "training command again")


@probe("weights in", "`final.pt` replaced, read by `python -m lib.generate`", "exit 2, one line: checksum; nothing sampled")
def p_wi_replaced_final_generate(h):
    run = h.run()
    torch.save({k: v + 1 for k, v in load(run / "final.pt").items()}, run / "final.pt")
    rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet")
    assert rc == 2 and not (h.tmp / "s.pt").exists()
    error_line(err, "checksum", run)


@probe("weights in", "`final.pt` replaced, as `python -m lib.train --init-from RUN`",
       "exit 2, one line: checksum; nothing trained")
def p_wi_replaced_final_init_from(h):
    run = h.run()
    torch.save({k: v + 1 for k, v in load(run / "final.pt").items()}, run / "final.pt")
    rc, _, err = h.call(train_main(), *ci_args(h.tmp / "ft", arm="s2dm"), "--init-from", run)
    assert rc == 2 and not (h.tmp / "ft" / "final.pt").exists()
    error_line(err, "checksum")


@probe("weights in", "an extension killed before it finished (`final.pt` of step 2, config asks 40)",
       "refused by `load_unet` and `lib.generate`: an unfinished extension; run its training command again")
def p_wi_extension_killed(h):
    from lib import pretrained
    run = h.run()
    extend_config(run)
    h.refused(PE(), lambda: pretrained.load_unet(run / "final.pt"), "unfinished extension")
    rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet")
    assert rc == 2
    error_line(err, "unfinished extension", "training command again")


@probe("weights in", "a raw pickle whose `__reduce__` writes a marker, as `model.pt`",
       "refused (never unpickled beyond plain containers); the marker never appears")
def p_wi_payload_raw_pickle(h):
    from lib import pretrained
    for protocol in (2, pickle.HIGHEST_PROTOCOL):  # torch's own protocol, and one its unpickler cannot even parse
        with open(h.tmp / "model.pt", "wb") as f:
            pickle.dump({"conv_in.weight": h.payload()}, f, protocol=protocol)
        msg = h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), h.tmp / "model.pt")
        assert protocol != 2 or "could run code" in msg, msg


@probe("weights in", "a `torch.save` archive holding a marker-writing object (`load_unet`, `lib.pretrained info`)",
       "refused, one line (exit 2 from the CLI); the marker never appears")
def p_wi_payload_torch_zip(h):
    from lib import pretrained
    torch.save({"conv_in.weight": torch.zeros(1), "x": h.payload()}, h.tmp / "model.pt")
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "model.pt"), "could run code")
    rc, _, err = h.call(pretrained_main(), "info", h.tmp / "model.pt")
    assert rc == 2
    error_line(err, h.tmp / "model.pt", "could run code")


@probe("weights in", "a DDIM-layout `[model, optimizer, epoch, step, ema]` list with a marker-writing optimizer entry",
       "refused; the marker never appears")
def p_wi_payload_ddim_ckpt(h):
    from lib import pretrained
    sd = load(h.run() / "final.pt")
    torch.save([sd, h.payload(), 0, 2, sd], h.tmp / "ckpt.pth")
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "ckpt.pth"), "could run code")


@probe("weights in", "a diffusers folder whose `.bin` writes a marker", "refused; the marker never appears")
def p_wi_payload_diffusers_bin(h):
    from lib import pretrained
    d = diffusers_folder(h.tmp / "unet", "x")
    torch.save({"conv_in.weight": h.payload()}, d / "diffusion_pytorch_model.bin")
    h.refused(PE(), lambda: pretrained.load_unet(d), "could run code")


@probe("weights in", "a marker-writing `final.pt` with a forged `final.json` checksum (`load_unet`, `lib.generate`)",
       "refused by the weights-only reader; the marker never appears")
def p_wi_payload_forged_final(h):
    from lib import pretrained
    run = h.run()
    buf = h.tmp / "evil.pt"
    torch.save({"conv_in.weight": h.payload()}, buf)
    forge_final(run, buf.read_bytes())
    h.refused(PE(), lambda: pretrained.load_unet(run), "could run code")
    rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet")
    assert rc == 2
    error_line(err, "final.pt")


@probe("weights in", "a marker-writing `ckpt-*.pt` in a run folder being resumed",
       "skipped with a warning naming it, training resumes from the previous checkpoint; the marker never appears")
def p_wi_payload_resume_ckpt(h):
    from lib.infra.config import get_config
    from lib.train import train
    run = h.run()
    (run / "final.pt").unlink()
    (run / "final.json").unlink()
    torch.save({"step": 2, "model": h.payload()}, run / "ckpt-00000002.pt")
    with pytest.warns(UserWarning, match="ckpt-00000002.pt"):
        train(get_config("ci", CI_SETS), "baseline", run, progress=False)
    assert same_state(load(run / "final.pt"), load(h.request.getfixturevalue("ci_run") / "final.pt"))


@probe("weights in", "`--init-from` a marker-writing `.pt` or an HTML page (`python -m lib.train`)",
       "exit 2, one line naming the file; nothing trained, the marker never appears")
def p_wi_bad_init_from(h):
    torch.save({"conv_in.weight": h.payload()}, h.tmp / "evil.pt")
    (h.tmp / "page.pt").write_bytes(HTML)
    for src in (h.tmp / "evil.pt", h.tmp / "page.pt"):
        rc, _, err = h.call(train_main(), *ci_args(h.tmp / "ft", arm="s2dm"), "--init-from", src)
        assert rc == 2 and not (h.tmp / "ft" / "final.pt").exists()
        error_line(err, src)


@probe("weights in", "`lib.generate --run-dir` a missing folder, or a file", "exit 2, one line: train it first")
def p_wi_generate_run_dir_missing(h):
    (h.tmp / "afile").write_text("x")
    for where in (h.tmp / "nothing", h.tmp / "afile"):
        rc, _, err = h.call(generate_main(), "--run-dir", where, "--out", h.tmp / "s.pt", "--quiet")
        assert rc == 2
        error_line(err, where, "train it first")


@probe("weights in", "a DDIM-layout checkpoint without its EMA entry", "refused: load it with entry='model'")
def p_wi_ddim_without_ema(h):
    from lib import pretrained
    sd = load(h.run() / "final.pt")
    torch.save([sd, {}, 0, 2], h.tmp / "ckpt.pth")
    h.refused(PE(), lambda: pretrained.load_unet(h.tmp / "ckpt.pth"), "entry='model'")


# ============================================================================ weights out
def export(h, run, out):
    return h.call(pretrained_main(), "export", run, out)


@probe("weights out", "export into a non-empty folder", "exit 2, one line: choose an empty folder; its files untouched")
def p_wo_nonempty(h):
    out = h.tmp / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = export(h, h.run("wide_run"), out)
    assert rc == 2 and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    error_line(err, out, "empty")


@probe("weights out", "export into an unwritable folder (read-only file system, or EACCES)",
       "exit 2, one line: choose a writable folder; nothing left behind")
def p_wo_unwritable(h):
    with h.small_disk() as disk:
        if disk is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            out = disk / "out"
        else:
            out = h.tmp / "ro" / "out"
            real = Path.mkdir
            h.mp.setattr(Path, "mkdir", lambda self, *a, **k: (_ for _ in ()).throw(
                PermissionError(errno.EACCES, "Permission denied", str(self))) if "ro" in self.parts else real(self, *a, **k))
        rc, _, err = export(h, h.run("wide_run"), out)
        assert rc == 2 and not out.exists()
        error_line(err, "writable")


@probe("weights out", "export to a path that is a file", "exit 2, one line: it is a file; the file untouched")
def p_wo_out_is_file(h):
    out = h.tmp / "out"
    out.write_text("mine")
    rc, _, err = export(h, h.run("wide_run"), out)
    assert rc == 2 and out.read_text() == "mine"
    error_line(err, out, "file")


@probe("weights out", "export a run without `final.pt`", "exit 2, one line: not a finished run, train it to the end")
def p_wo_no_final(h):
    run = h.run("wide_run")
    (run / "final.pt").unlink()
    rc, _, err = export(h, run, h.tmp / "out")
    assert rc == 2 and not (h.tmp / "out").exists()
    error_line(err, "not a finished", run)


@probe("weights out", "export a run trained by older code (its run.json fingerprint differs)",
       "exit 2, one line naming the changed files: run its training command again (it retrains), then export")
def p_wo_older_code(h):
    run = h.run("wide_run")
    meta = json.loads((run / "run.json").read_text())
    meta["code"]["lib/unet.py"] = "0123456789abcdef"
    (run / "run.json").write_text(json.dumps(meta))
    rc, _, err = export(h, run, h.tmp / "out")
    assert rc == 2 and not (h.tmp / "out").exists()
    error_line(err, "lib/unet.py", "training command")


@probe("weights out", "export whose written weights do not load back (a torn write)",
       "exit 2, one line: the written folder failed its check and was removed; nothing at OUT")
def p_wo_verified_by_loading_back(h):
    import diffusers
    real = diffusers.UNet2DModel.save_pretrained

    def torn(self, folder, **k):
        real(self, folder, **k)
        w = Path(folder) / "diffusion_pytorch_model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    h.mp.setattr(diffusers.UNet2DModel, "save_pretrained", torn)
    out = h.tmp / "out"
    rc, _, err = export(h, h.run("wide_run"), out)
    assert rc == 2 and not out.exists() and not [p for p in h.tmp.iterdir() if p.name.startswith(".out")]
    error_line(err, out)


@probe("weights out", "a good export, read back through `lib.pretrained.load_unet`",
       "OK: the folder loads and holds the run's EMA weights exactly")
def p_wo_ok_round_trip(h):
    from lib import pretrained
    run, out = h.run("wide_run"), h.tmp / "out"
    rc, stdout, err = export(h, run, out)
    assert rc == 0, err
    ours, _ = pretrained.load_unet(run)
    back, _ = pretrained.load_unet(out)
    assert same_state(ours.state_dict(), back.state_dict())
    rc, _, err = export(h, run, out)  # the same command again replaces its own earlier export
    assert rc == 0, err


# ============================================================================ caches and provenance
def classifier_cfg():
    from lib.infra.config import get_config
    return get_config("ci", ["eval.classifier_steps=2"])


def classifier_cache(h):
    from lib.measure import classifier
    cfg = classifier_cfg()
    cache = h.tmp / "cls"
    classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    key = classifier.classifier_key(cfg.data, cfg.eval)
    return cfg, cache, cache / f"{key}.pt", cache / f"{key}.json"


@probe("caches and provenance", "the classifier feature-network cache after a change of its code",
       "rebuilt, with a warning saying the code changed")
def p_cp_classifier_code_change(h):
    from lib.measure import classifier
    cfg, cache, pt, js = classifier_cache(h)
    h.mp.setattr(classifier, "classifier_code", lambda: {"lib/measure/classifier.py": "other"})
    with pytest.warns(UserWarning, match="other classifier code"):
        classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    assert json.loads(js.read_text())["code"] == {"lib/measure/classifier.py": "other"}


@probe("caches and provenance", "a torn, a garbage or a marker-writing classifier cache `.pt`, a torn `.json`",
       "rebuilt each time with a warning naming the cache; the marker never appears")
def p_cp_classifier_bad_cache(h):
    from lib.measure import classifier
    cfg, cache, pt, js = classifier_cache(h)
    good = load(pt)
    for spoil in (lambda: pt.write_bytes(pt.read_bytes()[:100]), lambda: pt.write_bytes(HTML),
                  lambda: torch.save({"x": h.payload()}, pt), lambda: js.write_text('{"key": ')):
        spoil()
        with pytest.warns(UserWarning, match=str(pt)):
            classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
        assert same_state(load(pt), good)


@probe("caches and provenance", "a torn last row of `loss.csv` (killed mid-append)",
       "reading it is one line naming the file; resuming drops the torn row")
def p_cp_torn_loss_csv(h):
    from lib.infra import runlog
    run = h.run()
    (run / "loss.csv").write_text((run / "loss.csv").read_text() + "3,0.5")
    h.refused(runlog.LogError, lambda: runlog.read_log(run), run / "loss.csv", "training command again")
    rc, _, err = h.call(train_main(), *ci_args(run, "train.steps=3"))
    assert rc == 0, err
    assert runlog.read_log(run)["step"] == [1.0, 2.0, 3.0]


@probe("caches and provenance", "a binary garbage `loss.csv`", "reading it is one line naming the file")
def p_cp_garbage_loss_csv(h):
    from lib.infra import runlog
    run = h.run()
    (run / "loss.csv").write_bytes(b"\x00\xff\xfe garbage \x80" * 20)
    h.refused(runlog.LogError, lambda: runlog.read_log(run), run / "loss.csv")


@probe("caches and provenance", "an invalid `final.json` (`lib.generate`, `load_unet`, `lib.train`)",
       "one line naming final.json each (delete it); training then rebuilds it from the last checkpoint")
def p_cp_invalid_final_json(h):
    from lib import pretrained
    run = h.run()
    (run / "final.json").write_text('{"step": 2, "arm"')
    rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet")
    assert rc == 2
    error_line(err, "final.json")
    h.refused(PE(), lambda: pretrained.load_unet(run), "final.json")
    rc, _, err = h.call(train_main(), *ci_args(run))
    assert rc == 2 and (run / "final.pt").exists()
    error_line(err, run / "final.json", "delete it", "rebuilds")
    (run / "final.json").unlink()
    rc, _, err = h.call(train_main(), *ci_args(run))
    assert rc == 0, err
    assert same_state(load(run / "final.pt"), load(h.request.getfixturevalue("ci_run") / "final.pt"))
    pretrained.load_unet(run)


@probe("caches and provenance", "an invalid `config.json` or `run.json` in a run folder",
       "one line naming the file, from `load_unet` and from `lib.train`")
def p_cp_invalid_config_json(h):
    from lib import pretrained
    for name in ("config.json", "run.json"):
        run = h.run()
        (run / name).write_text("{not json")
        if name == "config.json":
            h.refused(PE(), lambda: pretrained.load_unet(run), run / name)
        rc, _, err = h.call(train_main(), *ci_args(run))
        assert rc == 2
        error_line(err, run / name)
        shutil.rmtree(run)


@probe("caches and provenance", "a fine-tune resumed without `--init-from`",
       "resumed; run.json keeps the initial weights' record")
def p_cp_finetune_resumed_without_init_from(h):
    src = h.run()
    ft = h.tmp / "ft"
    rc, _, err = h.call(train_main(), *ci_args(ft, arm="s2dm"), "--init-from", src)
    assert rc == 0, err
    rec = json.loads((ft / "run.json").read_text())["init_from"]
    rc, _, err = h.call(train_main(), *ci_args(ft, "train.steps=3", arm="s2dm"))
    assert rc == 0, err
    assert json.loads((ft / "run.json").read_text())["init_from"] == rec


@probe("caches and provenance", "another `--profile` on an existing run folder",
       "exit 2, one line with the differing keys; nothing moved aside")
def p_cp_profile_mismatch(h):
    run = h.run()
    rc, _, err = h.call(train_main(), "--profile", "cpu", "--arm", "baseline", "--out", run, "--quiet")
    assert rc == 2 and not (run / "superseded").exists() and (run / "final.pt").exists()
    error_line(err, "profile 'ci', not 'cpu'", "another --out")


@probe("caches and provenance", "a run folder deleted before a notebook step samples from it",
       "one line naming the folder and notebook 03_train")
def p_cp_run_deleted_before_sampling(h):
    from lib import generate
    run = h.run()
    shutil.rmtree(run)
    h.refused(FileNotFoundError, lambda: generate.load_model(run), run, "03_train")


@probe("caches and provenance", "a run folder deleted while its training runs",
       "training stops with one line (the folder vanished), writing no final.pt into a re-created folder")
def p_cp_run_deleted_while_training(h):
    from lib.infra import checkpoint as ckpt
    real = ckpt.save_checkpoint

    def then_delete(run_dir, step, *a, **k):
        r = real(run_dir, step, *a, **k)
        if step == 1:
            shutil.rmtree(run_dir)
        return r
    h.mp.setattr(ckpt, "save_checkpoint", then_delete)
    for i, log_every in enumerate((1, 10)):  # the next write is a log row, or (no row due) a checkpoint and final.pt
        out = h.tmp / f"r{i}"
        rc, _, err = h.call(train_main(), *ci_args(out, f"train.log_every={log_every}"))
        assert rc == 2 and not (out / "final.pt").exists()
        error_line(err, out, "was deleted", "same command again")


@probe("caches and provenance", "a CIFAR-10 batch replaced by a marker-writing pickle",
       "refused naming the file; the marker never appears")
def p_cp_cifar_payload(h):
    from lib import readers as data
    folder = data.cifar10_folder(h.tmp)
    folder.mkdir(parents=True)
    for f in data.CIFAR10_TRAIN_FILES:
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": h.payload()}, fh)
    with pytest.raises(Exception) as e:
        data.load_cifar10(h.tmp)
    one_line(e.value, folder / data.CIFAR10_TRAIN_FILES[0])


@probe("caches and provenance", "a feature file (`.npz`) holding a marker-writing object array, or garbage",
       "refused naming the file and notebook 04 (no pickle read); the marker never appears")
def p_cp_npz_payload(h):
    import numpy as np

    from lib.experiment import evaluate
    evil = h.tmp / "features.npz"
    np.savez(evil, features=np.array([h.payload()], dtype=object))
    h.refused(ValueError, lambda: evaluate.read_array(evil, "04_sampler_sweeps"), evil, "04_sampler_sweeps")
    (h.tmp / "g.npz").write_bytes(b"\x93NUMPY garbage" * 10)
    h.refused(ValueError, lambda: evaluate.read_array(h.tmp / "g.npz", "04_sampler_sweeps"), h.tmp / "g.npz")


@probe("caches and provenance", "a worker call file naming a function outside the registry",
       "exit 2, one line; the function is never called (the marker never appears)")
def p_cp_worker_call_other_function(h):
    from lib.experiment import worker_main
    call = h.tmp / "call.json"
    call.write_text(json.dumps({"function": "builtins:exec", "out": str(h.tmp / "o.json"),
                                "kwargs": {"source": f"open({str(h.marker)!r}, 'w')"}}))
    rc, _, err = h.call(lambda a: worker_main.main(*a), call)
    assert rc == 2 and not (h.tmp / "o.json").exists()
    error_line(err, call)


# ============================================================================ roots and disks
@probe("roots and disks", "a relative output root, then a worker in another folder",
       "resolved once from the caller's folder; every path handed on is absolute")
def p_rd_relative_root(h):
    from lib.infra.paths import Paths
    h.mp.chdir(h.tmp)
    P = Paths("ci", "relout")
    h.mp.chdir("/")
    assert P.run("images/s2dm") == h.tmp / "relout" / "data" / "runs" / "ci" / "images" / "s2dm"


@probe("roots and disks", "an output root that is a file, or on a read-only disk (notebook `root` parameter)",
       "one line naming the root: choose a writable folder")
def p_rd_unwritable_root(h):
    from lib.infra.paths import Paths
    (h.tmp / "afile").write_text("x")
    roots = [h.tmp / "afile"]
    with h.small_disk() as disk:
        if disk is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            roots.append(disk / "out")
        for root in roots:
            for folder in ("figures", "runs"):
                h.refused(ValueError, lambda: getattr(Paths("ci", root), folder), root, "writable")


@probe("roots and disks", "`scripts/run_notebook.py --root` a file", "exit 1, one line naming the root")
def p_rd_run_notebook_root_is_file(h):
    (h.tmp / "afile").write_text("x")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"),
                        str(ROOT / "notebooks" / "01_noise_schedule.ipynb"), "--profile", "ci", "--root",
                        str(h.tmp / "afile")], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0
    one_line(r.stderr, h.tmp / "afile", "writable")


@probe("roots and disks", "the disk of `lib.generate --out` fills while sampling",
       "exit 2, one line; the finished samples are kept on another disk, the same command resumes")
def p_rd_disk_full_sampling(h):
    import tempfile

    from lib import generate
    run = h.run()
    with h.small_disk("2m") as disk:
        real_generate = generate.generate
        if disk is not None:
            out = disk / "s.pt"

            def fills(*a, **k):
                x = real_generate(*a, **k)
                fill(disk)
                return x
        else:
            from lib.infra import checkpoint as ckpt
            out = h.tmp / "full" / "s.pt"
            real_save = ckpt.atomic_save
            h.mp.setattr(ckpt, "atomic_save", lambda obj, p, *a, **k: (_ for _ in ()).throw(
                ckpt.DiskFull(errno.ENOSPC, f"no space left on the disk of {p}")) if "full" in str(p)
                else real_save(obj, p, *a, **k))
            fills = real_generate
        h.mp.setattr(generate, "generate", fills)
        (h.tmp / "other").mkdir()
        h.mp.setattr(tempfile, "gettempdir", lambda: str(h.tmp / "other"))
        rc, _, err = h.call(generate.main, "--run-dir", run, "--out", out, "--quiet", "-n", "4")
        assert rc == 2 and not out.exists()
        error_line(err, "kept in")
        kept = list((h.tmp / "other").glob("s2dm-rescued-*"))
        assert len(kept) == 1 and load(kept[0]).shape[0] == 4


@probe("roots and disks", "the disk of a run folder fills during a checkpoint write",
       "exit 2, one line (free and needed space); after freeing space the same command ends bit for bit as an uninterrupted run")
def p_rd_disk_full_checkpoint(h):
    from lib.infra import checkpoint as ckpt
    with h.small_disk("16m") as disk:
        out = (disk or h.tmp) / "run"
        real = ckpt.save_checkpoint
        state = {}

        def fills(run_dir, step, *a, **k):
            if step == 2:
                if disk is None:
                    raise ckpt.DiskFull(errno.ENOSPC, f"no space left on the disk of {run_dir}: free space there")
                state["filler"] = fill(disk, leave=4096)
            return real(run_dir, step, *a, **k)
        h.mp.setattr(ckpt, "save_checkpoint", fills)
        rc, _, err = h.call(train_main(), *ci_args(out))
        assert rc == 2 and [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-00000001.pt"]
        error_line(err, "no space left")
        if "filler" in state:
            state["filler"].unlink()
        h.mp.setattr(ckpt, "save_checkpoint", real)
        rc, _, err = h.call(train_main(), *ci_args(out))
        assert rc == 0, err
        assert same_state(load(out / "final.pt"), load(h.request.getfixturevalue("ci_run") / "final.pt"))


@probe("roots and disks", "the disk of the classifier cache fills while caching the feature network",
       "one line (no space left, the disk and the space); no torn cache; the next call writes it")
def p_rd_disk_full_feature_cache(h):
    from lib.infra import checkpoint as ckpt
    from lib.measure import classifier
    cfg = classifier_cfg()
    with h.small_disk("1m") as disk:
        cache = (disk or h.tmp) / "cls"
        if disk is not None:
            fill(disk, leave=8192)
        else:
            real = classifier.atomic_write_bytes
            h.mp.setattr(classifier, "atomic_write_bytes", lambda p, fn, *a, **k: (_ for _ in ()).throw(
                ckpt.DiskFull(errno.ENOSPC, f"no space left on the disk of {p}")))
        h.refused(ckpt.DiskFull, lambda: classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache,
                                                                   progress=False), "no space left")
        assert not cache.exists() or not any(p.suffix == ".pt" for p in cache.iterdir())
        if disk is not None:
            (disk / "filler").unlink()
        else:
            h.mp.setattr(classifier, "atomic_write_bytes", real)
        classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
        assert len(list(cache.glob("*.pt"))) == 1


@probe("roots and disks", "the disk of an export fills while writing the diffusers folder",
       "exit 2, one line (no space left); nothing half-written at OUT; the same command works once there is room")
def p_rd_disk_full_export(h):
    import diffusers
    run = h.run("wide_run")
    with h.small_disk("1m") as disk:
        out = (disk or h.tmp) / "out"
        real = diffusers.UNet2DModel.save_pretrained
        if disk is None:
            h.mp.setattr(diffusers.UNet2DModel, "save_pretrained", lambda self, f, **k: (_ for _ in ()).throw(enospc(f)))
        rc, _, err = export(h, run, out)
        assert rc == 2 and not out.exists() and not (disk and [p for p in disk.iterdir() if p.name.startswith(".")])
        error_line(err, "no space left")
        if disk is not None:
            return  # the wide run's weights (~2 MiB) do not fit 1 MiB: the refusal is what is probed
        h.mp.setattr(diffusers.UNet2DModel, "save_pretrained", real)
        rc, _, err = export(h, run, out)
        assert rc == 0, err


# ============================================================================ fetch
def fetch_env(h):
    """`make fetch`'s targets under this probe's folder: no network, the dataset step done."""
    from lib import readers
    from lib.measure import fid
    h.offline()
    h.mp.setattr(fid, "INCEPTION_DIR", str(h.tmp / "incep"))
    h.mp.setattr(fid, "STATS_DIR", str(h.tmp / "stats"))
    h.mp.setattr(readers, "load_cifar10", lambda *a, **k: None)
    (h.tmp / "incep").mkdir()
    (h.tmp / "stats").mkdir()


def fetch_main():
    from lib.experiment import fetch
    return fetch.main


@probe("fetch", "`python -m lib.experiment.fetch --profile gpu` with no network",
       "exit 2, one line: the download failed, nothing kept, where to place the file")
def p_fe_no_network(h):
    h.offline()
    rc, _, err = h.call(fetch_main(), "--profile", "gpu", "--root", h.tmp)
    assert rc == 2
    error_line(err, "download failed", "manually")


@probe("fetch", "an HTML page pre-placed as clean-fid's Inception weights, then no network",
       "the page is removed, saying so; the download's failure is one line")
def p_fe_html_inception(h):
    from lib.measure import fid
    fetch_env(h)
    w = h.tmp / "incep" / fid.INCEPTION_FILE
    w.write_bytes(HTML)
    rc, _, err = h.call(fetch_main(), "--profile", "gpu", "--root", h.tmp)
    assert rc == 2 and not w.exists() and "downloading it again" in err
    error_line(err, "failed")


@probe("fetch", "a truncated file pre-placed as clean-fid's Inception weights, then no network",
       "removed as not a zip or pickle; the download's failure is one line")
def p_fe_truncated_inception(h):
    from lib.measure import fid
    fetch_env(h)
    w = h.tmp / "incep" / fid.INCEPTION_FILE
    torch.save({"w": torch.zeros(1 << 19)}, w)
    w.write_bytes(w.read_bytes()[: (1 << 20) + 100])
    rc, _, err = h.call(fetch_main(), "--profile", "gpu", "--root", h.tmp)
    assert rc == 2 and not w.exists()
    error_line(err, "failed")


@probe("fetch", "an HTML page pre-placed as the FID reference statistics, then no network",
       "removed, saying so; the download's failure is one line")
def p_fe_html_stats(h):
    from lib.infra.config import get_config
    from lib.measure import fid
    fetch_env(h)
    cfg = get_config("gpu")
    incep = h.tmp / "incep" / fid.INCEPTION_FILE
    torch.save({"w": torch.zeros(1 << 19)}, incep)  # in place, so the statistics come next
    s = h.tmp / "stats" / fid.stats_filename(cfg.data.dataset, cfg.eval.fid_mode, cfg.data.image_size, "train")
    s.write_bytes(HTML)
    rc, _, err = h.call(fetch_main(), "--profile", "gpu", "--root", h.tmp)
    assert rc == 2 and not s.exists()
    error_line(err, "failed")


@probe("fetch", "a truncated DDPM checkpoint pre-placed (wrong MD5), then no network (`lib.pretrained fetch`)",
       "says it has the wrong MD5 and downloads again; the failure is one line; the bad file is never served")
def p_fe_truncated_ckpt(h):
    from lib import pretrained
    h.offline()
    dest = pretrained.checkpoints.named_path("ema_cifar10", h.tmp)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    rc, _, err = h.call(pretrained_main(), "fetch", "ema_cifar10", "--root", h.tmp)
    assert rc == 2 and "wrong MD5" in err
    error_line(err, "failed")
    h.refused(PE(), lambda: pretrained.load_unet("ema_cifar10", root=h.tmp), "MD5")


@probe("fetch", "a server answering the DDPM checkpoint's URL with an HTML page",
       "refused by its MD5: nothing installed, one line")
def p_fe_html_served(h):
    from lib import pretrained
    from lib.infra import download
    page = h.tmp / "page.html"
    page.write_bytes(HTML)
    real = download.urllib.request.urlopen
    h.mp.setattr(download.urllib.request, "urlopen", lambda url, **k: real(page.as_uri()))
    rc, _, err = h.call(pretrained_main(), "fetch", "ema_cifar10", "--root", h.tmp)
    assert rc == 2 and not pretrained.checkpoints.named_path("ema_cifar10", h.tmp).exists()
    error_line(err, "MD5", "nothing was kept")


@probe("fetch", "an unknown profile (`lib.experiment.fetch`) or checkpoint name (`lib.pretrained fetch`)",
       "exit 2, one line listing the valid names")
def p_fe_unknown_names(h):
    rc, _, err = h.call(fetch_main(), "--profile", "nope", "--root", h.tmp)
    assert rc == 2
    error_line(err, "unknown profile", "ci")
    rc, _, err = h.call(pretrained_main(), "fetch", "nope", "--root", h.tmp)
    assert rc == 2
    error_line(err, "unknown checkpoint", "ema_cifar10")


@probe("fetch", "no network for a hub folder (`lib.pretrained fetch google/ddpm-cifar10-32`)",
       "exit 2, one line: run it again with network, or place the folder by hand")
def p_fe_hub_no_network(h):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    h.mp.setattr(huggingface_hub, "snapshot_download", offline)
    rc, _, err = h.call(pretrained_main(), "fetch", "google/ddpm-cifar10-32", "--root", h.tmp)
    assert rc == 2
    error_line(err, "with network")


@probe("fetch", "an HTML page pre-placed as a hub folder's `config.json`, then no network",
       "not taken as in place: fetched again, and with no network one line; never reported as fetched")
def p_fe_hub_html_config(h):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from lib import pretrained
    folder = pretrained.checkpoints.named_path("google/ddpm-cifar10-32", h.tmp)
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(HTML)

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    h.mp.setattr(huggingface_hub, "snapshot_download", offline)
    rc, _, err = h.call(pretrained_main(), "fetch", "google/ddpm-cifar10-32", "--root", h.tmp)
    assert rc == 2
    error_line(err, "with network")


@probe("fetch", "an HTML page or a truncated pickle as a CIFAR-10 batch",
       "one line naming the batch and how to fetch it again")
def p_fe_cifar_html(h):
    from lib import readers as data
    folder = data.cifar10_folder(h.tmp)
    folder.mkdir(parents=True)
    for f in data.CIFAR10_TRAIN_FILES:
        (folder / f).write_bytes(HTML)
    with pytest.raises(Exception) as e:
        data.load_cifar10(h.tmp)
    one_line(e.value, folder / data.CIFAR10_TRAIN_FILES[0])
    with open(folder / data.CIFAR10_TRAIN_FILES[0], "wb") as fh:
        pickle.dump({b"data": b"x" * 100, b"labels": [1] * 10}, fh)
    (folder / data.CIFAR10_TRAIN_FILES[0]).write_bytes((folder / data.CIFAR10_TRAIN_FILES[0]).read_bytes()[:50])
    with pytest.raises(Exception) as e:
        data.load_cifar10(h.tmp)
    one_line(e.value, folder / data.CIFAR10_TRAIN_FILES[0])


@probe("fetch", "CIFAR-10 with `--set data.download=true` and no network (`lib.train`)",
       "exit 2, one line: the download failed, where to place the files")
def p_fe_cifar_download_offline(h):
    h.offline()
    rc, _, err = h.call(train_main(), "--profile", "gpu", "--arm", "baseline", "--out", h.tmp / "r", "--quiet",
                        "--set", "train.device=cpu", "--set", f"data.root={h.tmp / 'data'}", "--set", "data.download=true")
    assert rc == 2
    error_line(err, "CIFAR-10", "tar -xzf")


@probe("caches and provenance", "the training set's Inception-feature cache made by other code, for other images, or torn",
       "rebuilt with a warning naming the file and why (other code, other images, torn); never reused")
def p_cp_reference_features(h):
    from lib.measure import fid, reference
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    kw = dict(dataset="cifar10", mode="legacy_tensorflow", cache_dir=h.tmp, progress=False)
    h.mp.setattr(fid, "inception_features", lambda images, **k: images.float().flatten(1)[:, :64].numpy())
    reference.reference_features(x, **kw)
    meta = next(h.tmp.glob("*.json"))
    key = json.loads(meta.read_text())
    for field, value, why in (("code", {"lib/measure/fid.py": "0"}, "another code"),
                              ("images_sha256", "0" * 64, "another images_sha256")):
        meta.write_text(json.dumps({**key, field: value}))
        with pytest.warns(UserWarning, match=why):
            reference.reference_features(x, **kw)
    meta.write_text('{"torn')
    with pytest.warns(UserWarning, match="torn"):
        reference.reference_features(x, **kw)
    assert json.loads(meta.read_text()) == key  # rebuilt under today's key


@probe("roots and disks", "`make lab` run as root (Docker, cloud GPU images)",
       "JupyterLab is started with --allow-root only where the user is root, on the project's own kernel")
def p_rd_make_lab_as_root(h):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    r = subprocess.run(["make", "-n", "--no-print-directory", "lab", "VENV=" + str(h.tmp / "venv")], cwd=ROOT,
                       capture_output=True, text=True)
    lab = next(ln for ln in r.stdout.splitlines() if "jupyter lab" in ln)
    assert ("--allow-root" in lab) == (os.geteuid() == 0) and "allowed_kernelspecs=s2dm-" in lab, lab


@probe("fetch", "`make torch` where PyTorch's CPU wheel index is unreachable (no NVIDIA GPU)",
       "says so in one line and installs the pinned torch from the default index instead")
def p_fe_cpu_wheel_fallback(h):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    bin_ = h.tmp / "bin"
    bin_.mkdir()
    env = {**os.environ, "PATH": f"{bin_}:/usr/bin:/bin"}  # no nvidia-smi on PATH
    r = subprocess.run(["make", "--no-print-directory", "torch", "PIP=echo", "TORCH_PROBE=false", "TORCH_INDEX=auto",
                        "PY=" + sys.executable], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("make:")]
    one_line("\n".join(said), "unreachable", "default index")
    assert any(ln.startswith("install") and "torch==" in ln and "--index-url" not in ln for ln in r.stdout.splitlines())


# ============================================================================ preflight and rehearsal
def preflight_main():
    sys.path.insert(0, str(ROOT / "scripts"))
    import preflight
    return preflight.main


def rehearse_main():
    sys.path.insert(0, str(ROOT / "scripts"))
    import rehearse
    return rehearse.main


def bare(h):
    """No clean-fid files where this process looks for them, no data under h.tmp."""
    from lib.measure import fid
    h.mp.setattr(fid, "INCEPTION_DIR", str(h.tmp / "no-incep"))
    h.mp.setattr(fid, "STATS_DIR", str(h.tmp / "no-stats"))


def rehearsal_fixtures(h, stats=True):
    """The rehearsal's fixtures under h.tmp (its CIFAR-10 batches, stand-in statistics, ema_cifar10) and its manifest."""
    from lib.experiment import fixtures
    from lib.infra import profiles
    from lib.infra.config import get_config
    over = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in profiles.REHEARSAL_SIZES.items()]
    over += ["train.device=cpu", f"data.root={h.tmp / 'data'}"]
    return fixtures.make(h.tmp, "gpu", get_config("gpu", over), over, {"steps": (3,), "n_samples": 4, "finetune_steps": 1}), over


@probe("preflight and rehearsal", "`scripts/preflight.py --profile gpu` on a bare checkout (no data, no clean-fid files)",
       "exit 1 within seconds: one MISSING line each for CIFAR-10, the Inception weights and statistics, ema_cifar10, "
       "each naming where it goes and make fetch")
def p_pf_bare(h):
    bare(h)
    rc, out, err = h.call(preflight_main(), "--profile", "gpu", "--root", h.tmp, "--set", f"data.root={h.tmp / 'data'}")
    assert rc == 1 and "Traceback" not in out + err and "make fetch PROFILE=gpu" in err
    missing = [ln for ln in out.splitlines() if "MISSING" in ln]
    for what in ("CIFAR-10", "inception-2015-12-05.pt", "cifar10_legacy_tensorflow_train_32.npz", "ema_cifar10"):
        assert sum(what in ln and "make fetch" in ln for ln in missing) >= 1, (what, missing)


@probe("preflight and rehearsal", "`scripts/preflight.py` with an unknown profile or key",
       "exit 1, one line naming the valid profiles or keys")
def p_pf_unknown(h):
    for args, needle in ((["--profile", "gpux"], "valid profiles"), (["--profile", "gpu", "--set", "train.stepz=1"], "valid keys")):
        rc, out, err = h.call(preflight_main(), *args)
        assert rc == 1
        one_line(out, needle)


@probe("preflight and rehearsal", "the rehearsal's random `ema_cifar10` placed where the real one goes, read by a normal run",
       "refused by its MD5 (the published one); only a run naming the manifest (experiment.rehearsal) accepts it")
def p_pf_fixture_ckpt_normal_run(h):
    from lib import pretrained
    from lib.infra import rehearsal
    manifest, _ = rehearsal_fixtures(h)
    h.refused(PE(), lambda: pretrained.load_state("ema_cifar10", root=h.tmp), "1fa350b952534ae442b1d5235cce5cd3",
              "fetch it again")
    assert pretrained.load_state("ema_cifar10", root=h.tmp, manifest=rehearsal.load(manifest))["groups"] == 32


@probe("preflight and rehearsal", "`experiment.rehearsal` naming a missing, garbage or foreign manifest",
       "one line naming the file and scripts/rehearse.py; nothing is read from it")
def p_pf_bad_manifest(h):
    from lib.infra import rehearsal
    from lib.infra.config import ConfigError, get_config
    for name, text in (("none.json", None), ("torn.json", '{"kind": "s2dm-rehe'), ("foreign.json", '{"kind": "x"}'),
                       ("pickle.json", pickle.dumps(h.payload()))):
        p = h.tmp / name
        if text is not None:
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
        h.refused(ConfigError, lambda: rehearsal.of(get_config("gpu", [f"experiment.rehearsal={p}"])), str(p),
                  "scripts/rehearse.py")


@probe("preflight and rehearsal", "a rehearsal fixture (the stand-in statistics) changed after its manifest was written",
       "refused by its checksum in one line: run scripts/rehearse.py again")
def p_pf_fixture_changed(h):
    from lib.infra import rehearsal
    from lib.measure import fid
    manifest, _ = rehearsal_fixtures(h)
    m = rehearsal.load(manifest)
    stats = Path(next(iter(m.stats.values()))["path"])
    stats.write_bytes(stats.read_bytes()[:-8] + b"\0" * 8)
    h.refused(rehearsal.ManifestError, lambda: fid.reference_stats(manifest=m), str(stats), "changed",
              "scripts/rehearse.py")


@probe("preflight and rehearsal", "`scripts/rehearse.py` with the repository as its root, or a profile other than gpu/paper",
       "exit 2, one line: a rehearsal never writes into the repository's figures/ or data/runs/")
def p_pf_rehearse_root(h):
    for args, needle in ((["--profile", "gpu", "--root", ROOT], "repository itself"), (["--profile", "cpu"], "gpu or paper")):
        rc, _, err = h.call(rehearse_main(), *args)
        assert rc == 2
        error_line(err, needle)


@probe("preflight and rehearsal", "the preflight of the rehearsal on its own fixtures",
       "ready: every file found through the manifest, the plan printed, no CUDA asked for on a CPU")
def p_pf_rehearsal_ready(h):
    manifest, over = rehearsal_fixtures(h)
    rc, out, err = h.call(preflight_main(), "--profile", "gpu", "--root", h.tmp,
                          *[a for o in (*over, f"experiment.rehearsal={manifest}") for a in ("--set", o)])
    assert rc == 0 and "MISSING" not in out and "plan:" in out and "(rehearsal)" in out, out + err


# ============================================================================ configuration and CLIs
def cli_refuses(h, *sets, needles=()):
    rc, _, err = h.call(train_main(), *ci_args(h.tmp / "r", *sets))
    assert rc == 2 and not (h.tmp / "r" / "final.pt").exists()
    return error_line(err, *needles)


@probe("configuration and CLIs", "an unknown key (`--set train.stepz=3`, `--set trian.steps=3`)",
       "exit 2, one line listing the valid keys")
def p_cf_unknown_key(h):
    cli_refuses(h, "train.stepz=3", needles=("train.stepz", "valid keys"))
    cli_refuses(h, "trian.steps=3", needles=("trian.steps", "section"))


@probe("configuration and CLIs", "a wrong type (`train.steps=abc`, `model.ch_mult=x`, `train.amp=1`)",
       "exit 2, one line naming the key and the type")
def p_cf_wrong_type(h):
    cli_refuses(h, "train.steps=abc", needles=("train.steps", "integer"))
    cli_refuses(h, "model.ch_mult=x", needles=("model.ch_mult", "integer"))
    cli_refuses(h, "train.amp=1", needles=("train.amp", "'none' or 'bf16'"))


@probe("configuration and CLIs", "a NaN or infinite learning rate (`train.lr=nan`, `train.lr=inf`)",
       "exit 2, one line before anything is built")
def p_cf_nan_lr(h):
    cli_refuses(h, "train.lr=nan", needles=("train.lr", "finite"))
    cli_refuses(h, "train.lr=inf", needles=("train.lr", "finite"))


@probe("configuration and CLIs", "a learning rate that makes the loss non-finite (`train.lr=1e30`)",
       "training stops at the first non-finite loss naming the step and the last good checkpoint, which is kept and finite")
def p_cf_diverging_lr(h):
    out = h.tmp / "r"
    rc, _, err = h.call(train_main(), *ci_args(out, "train.steps=6", "train.lr=1e30"))
    assert rc == 2 and not (out / "final.pt").exists()
    line = error_line(err, "at step", "last good checkpoint")
    kept = [p for p in out.glob("ckpt-*.pt")]
    assert kept and kept[-1].name in line
    state = load(kept[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@probe("configuration and CLIs", "negative or zero steps (`train.steps=-1`, `lib.generate --steps 0`, `-n -4`)",
       "exit 2, one line naming the value")
def p_cf_negative_steps(h):
    cli_refuses(h, "train.steps=-1", needles=("train.steps", "positive"))
    run = h.run()
    for args, needle in ((("--steps", "0"), "step"), (("-n", "-4"), "--num-samples")):
        rc, _, err = h.call(generate_main(), "--run-dir", run, "--out", h.tmp / "s.pt", "--quiet", *args)
        assert rc == 2
        error_line(err, needle)


@probe("configuration and CLIs", "`--out` an existing file (`lib.train`), a directory (`lib.generate`)",
       "exit 2, one line; the file untouched")
def p_cf_out_existing_file(h):
    (h.tmp / "afile").write_text("mine")
    rc, _, err = h.call(train_main(), *ci_args(h.tmp / "afile"))
    assert rc == 2 and (h.tmp / "afile").read_text() == "mine"
    error_line(err, h.tmp / "afile", "directory")
    rc, _, err = h.call(generate_main(), "--run-dir", h.run(), "--out", h.tmp, "--quiet")
    assert rc == 2
    error_line(err, "is a directory")


@probe("configuration and CLIs", "an unknown profile, an override without `=`, an unknown sampler",
       "exit 2, one line listing what is valid")
def p_cf_unknown_names(h):
    rc, _, err = h.call(train_main(), "--profile", "nope", "--arm", "baseline", "--out", h.tmp / "r")
    assert rc == 2
    error_line(err, "unknown profile", "ci")
    cli_refuses(h, "train.steps", needles=("section.key=value",))
    rc, _, err = h.call(generate_main(), "--run-dir", h.run(), "--out", h.tmp / "s.pt", "--method", "nope")
    assert rc == 2
    error_line(err, "unknown sampling method", "ddim")


@probe("configuration and CLIs", "papermill parameters of the wrong type (`profile=3`, `root=5`, `profile=['ci']`)",
       "one line naming the parameter and how to pass it")
def p_cf_papermill_types(h):
    from lib.infra.config import ConfigError, get_config
    from lib.infra.paths import Paths
    h.refused(ValueError, lambda: Paths(3), "profile=3", "-p profile")
    h.refused(ValueError, lambda: Paths("ci", 5), "root=5", "-p root")
    h.refused(ConfigError, lambda: get_config(["ci"]), "unknown profile")


# ============================================================================ interruption
# A child process that runs CODE after wrapping MODULE.FUNCTION so that its N-th call, once done, writes
# the file READY and sleeps: the test then sends the signal at that known point.
PAUSED = r"""
import importlib, os, sys, time
mod, fn, n = os.environ["S2DM_PAUSE"].split(":")
m = importlib.import_module(mod)
real, calls = getattr(m, fn), [0]
def paused(*a, **k):
    r = real(*a, **k)
    calls[0] += 1
    if calls[0] == int(n):
        open(os.environ["S2DM_READY"], "w").close()
        time.sleep(600)
    return r
setattr(m, fn, paused)
exec(sys.argv.pop(1))  # the code; its arguments are then sys.argv[1:]
"""


def interrupt(h, code: str, pause: str, sig, *, argv=()):
    """Run ``code`` in a child, send ``sig`` when the paused call is reached; the child's stderr."""
    ready = h.tmp / "READY"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), S2DM_PAUSE=pause, S2DM_READY=str(ready))
    p = subprocess.Popen([sys.executable, "-c", PAUSED, code, *map(str, argv)], cwd=h.tmp, env=env,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while not ready.exists():  # the child either reaches the pause or ends
            assert p.poll() is None, f"the child ended before the pause: {p.stderr.read()[-3000:]}"
            time.sleep(0.05)
        os.killpg(p.pid, sig)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == -sig, p.returncode
    return p.stderr.read()


TRAIN4 = ("from lib.train import main; import sys; sys.exit(main(['--profile', 'ci', '--arm', 'baseline', '--out', "
          "sys.argv[1], '--quiet', '--set', 'train.steps=4', '--set', 'train.ckpt_every=1', '--set', 'train.log_every=1']))")


def interrupted_training(h, sig):
    from lib.infra import runlog
    from lib.infra.config import get_config
    from lib.train import train
    out = h.tmp / "run"
    interrupt(h, TRAIN4, "lib.infra.checkpoint:save_checkpoint:2", sig, argv=[out])
    assert not (out / "final.pt").exists() and len(list(out.glob("ckpt-*.pt"))) == 2
    train(get_config("ci", ["train.steps=4", "train.ckpt_every=1", "train.log_every=1"]), "baseline", out,
          progress=False)
    ref = h.request.getfixturevalue("ref4")
    assert same_state(load(out / "final.pt"), load(ref / "final.pt"))
    mine, theirs = runlog.read_log(out), runlog.read_log(ref)
    assert all(mine[k] == theirs[k] for k in runlog.LOG_FIELDS if k != "images_per_s")


@probe("interruption", "SIGTERM during training (after its second checkpoint), then the same command",
       "resumes: final weights `torch.equal` to an uninterrupted run's, the same loss table")
def p_in_sigterm_training(h):
    interrupted_training(h, signal.SIGTERM)


@probe("interruption", "SIGKILL during training, then the same command",
       "resumes: final weights `torch.equal` to an uninterrupted run's, the same loss table")
def p_in_sigkill_training(h):
    interrupted_training(h, signal.SIGKILL)


GENERATE = ("from lib.generate import main; import sys; sys.exit(main(['--run-dir', sys.argv[1], '--out', sys.argv[2], "
            "'--quiet', '-n', '8', '--batch-size', '4']))")


def interrupted_sampling(h, sig):
    from lib import generate
    run, out = h.run(), h.tmp / "s.pt"
    interrupt(h, GENERATE, "lib.samplers:sample:1", sig, argv=[run, out])
    assert not out.exists() and not list(h.tmp.glob(".s.pt.*"))
    rc, _, err = h.call(generate.main, "--run-dir", run, "--out", out, "--quiet", "-n", "8", "--batch-size", "4")
    assert rc == 0, err
    rc, _, err = h.call(generate.main, "--run-dir", run, "--out", h.tmp / "ref.pt", "--quiet", "-n", "8",
                        "--batch-size", "8")
    assert rc == 0, err
    assert torch.equal(load(out), load(h.tmp / "ref.pt"))


@probe("interruption", "SIGTERM during sampling (`lib.generate`, after its first batch), then the same command",
       "no partial file; the rerun's samples `torch.equal` to an uninterrupted set")
def p_in_sigterm_sampling(h):
    interrupted_sampling(h, signal.SIGTERM)


@probe("interruption", "SIGKILL during sampling, then the same command",
       "no partial file; the rerun's samples `torch.equal` to an uninterrupted set")
def p_in_sigkill_sampling(h):
    interrupted_sampling(h, signal.SIGKILL)


CLASSIFY = ("from lib.measure import classifier; from lib.infra.config import get_config; import sys; "
            "c = get_config('ci', ['eval.classifier_steps=2']); "
            "classifier.get_classifier(c.data, c.eval, cache_dir=sys.argv[1], progress=False)")


def interrupted_caching(h, sig):
    from lib.measure import classifier
    cfg = classifier_cfg()
    cache = h.tmp / "cls"
    interrupt(h, CLASSIFY, "lib.measure.classifier:atomic_write_bytes:1", sig, argv=[cache])
    with pytest.warns(UserWarning, match="interrupted write"):
        m = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=cache, progress=False)
    ref = classifier.get_classifier(cfg.data, cfg.eval, cache_dir=h.tmp / "ref", progress=False)
    assert same_state(m.state_dict(), ref.state_dict())
    assert json.loads(next(cache.glob("*.json")).read_text())["key"] == classifier.classifier_key(cfg.data, cfg.eval)


@probe("interruption", "SIGTERM while caching the classifier feature network (weights written, metadata not)",
       "the half cache is not used: rebuilt with a warning, identical to an uninterrupted build")
def p_in_sigterm_feature_cache(h):
    interrupted_caching(h, signal.SIGTERM)


@probe("interruption", "SIGKILL while caching the classifier feature network",
       "the half cache is not used: rebuilt with a warning, identical to an uninterrupted build")
def p_in_sigkill_feature_cache(h):
    interrupted_caching(h, signal.SIGKILL)


def probe_notebook(path: Path):
    import nbformat
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "ci"\nroot = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from lib.infra import paths\nfrom lib.experiment import report\n"
        "report.save_table([{'a': 1, 'b': 0.25}], paths.Paths(profile, root or None).figures, '99_table')"),
        nbformat.v4.new_code_cell("import os, time\nif os.environ.get('S2DM_READY'):\n"
                                  "    open(os.environ['S2DM_READY'], 'w').close()\n    time.sleep(600)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def interrupted_notebook(h, sig):
    from lib.experiment import report
    nb = probe_notebook(h.tmp / "99_probe.ipynb")
    root = h.tmp / "out"
    ready = h.tmp / "READY"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), S2DM_READY=str(ready))
    cmd = [sys.executable, str(ROOT / "scripts" / "run_notebook.py"), str(nb), "--profile", "ci", "--root", str(root)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        while not ready.exists():  # the notebook either reaches its pause cell or ends
            assert p.poll() is None, f"the notebook ended before its pause: {p.stderr.read()[-3000:]}"
            time.sleep(0.1)
        os.killpg(p.pid, sig)
        p.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    figures = root / "figures" / "ci"
    assert not (figures / "99_probe.ipynb").exists() and not (figures / "99_table.csv").exists()
    env.pop("S2DM_READY")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = h.tmp / "ref"
    report.save_table([{"a": 1, "b": 0.25}], ref, "99_table")
    assert (figures / "99_table.csv").read_text() == (ref / "99_table.csv").read_text()
    assert (figures / "99_probe.ipynb").exists() and not (figures / ".staging" / "99_probe").exists()


@probe("interruption", "SIGTERM to `scripts/run_notebook.py` and its kernel mid-notebook, then the same command",
       "nothing published (no executed copy, no table: make runs it again); the rerun publishes the same table as an uninterrupted run")
def p_in_sigterm_notebook(h):
    interrupted_notebook(h, signal.SIGTERM)


@probe("interruption", "SIGKILL to `scripts/run_notebook.py` and its kernel mid-notebook, then the same command",
       "nothing published; the rerun publishes the same table as an uninterrupted run")
def p_in_sigkill_notebook(h):
    interrupted_notebook(h, signal.SIGKILL)


# ============================================================================ the first cell
CELL = (ROOT / "scripts" / "bootstrap_cell.py").read_text()


def first_cell(h, **env):
    """The first notebook cell in an interpreter that cannot import `lib` (-S: no site-packages), on 'Colab'."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "S2DM_"))}
    e.update(S2DM_COLAB="1", S2DM_CLONE_DIR=str(h.tmp / "clone"), GIT_TERMINAL_PROMPT="0", **env)
    return subprocess.run([sys.executable, "-S", "-c", CELL], capture_output=True, text=True, cwd=h.tmp, env=e,
                          timeout=120)


def git_repo(where: Path, files: dict) -> str:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    where.mkdir(parents=True)
    for name, text in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)
    env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=p", "-c", "user.email=p@p", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=where, check=True, capture_output=True, env=env)
    return f"file://{where}"


@probe("first cell", "an unreachable `S2DM_REPO_URL`", "one line: could not clone, set the address or upload the folder")
def p_fc_unreachable_url(h):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    r = first_cell(h, S2DM_REPO_URL="http://127.0.0.1:9/s2dm.git")
    assert r.returncode == 1
    one_line(r.stderr, "Could not clone", "S2DM_REPO_URL", "upload")


@probe("first cell", "`S2DM_REPO_URL` a repository without `lib/`",
       "one line: the clone holds no lib/, set the address of this project's repository")
def p_fc_repo_without_lib(h):
    url = git_repo(h.tmp / "other", {"README.md": "another project\n"})
    r = first_cell(h, S2DM_REPO_URL=url)
    assert r.returncode == 1
    one_line(r.stderr, "lib/", "S2DM_REPO_URL")


@probe("first cell", "no network for the install step (pip cannot reach its index)",
       "pip's message, then one line: connect and run the cell again, or set S2DM_NO_INSTALL=1 where the packages are present")
def p_fc_install_offline(h):
    url = git_repo(h.tmp / "repo", {"lib/samplers.py": "", "lib/__init__.py": "",
                                   "scripts/bootstrap.py": (ROOT / "scripts" / "bootstrap.py").read_text(),
                                   "scripts/install_missing.py": (ROOT / "scripts" / "install_missing.py").read_text(),
                                   "requirements.txt": "s2dm-surely-absent-package==1.0\n"})
    r = first_cell(h, S2DM_REPO_URL=url, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
                   PIP_TIMEOUT="1", PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_FIND_LINKS="")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    one_line(last, "S2DM_NO_INSTALL", "network")


# ============================================================================ the tests
@pytest.mark.parametrize("p", PROBES, ids=[p.id for p in PROBES])
def test_probe(p, request, tmp_path, monkeypatch, capsys):
    h = Harness(request, tmp_path, monkeypatch, capsys)
    p.fn(h)
    assert not h.marker.exists(), "a crafted file ran code"


def test_the_probe_list_is_well_formed():
    ids = [p.id for p in PROBES]
    assert len(ids) == len(set(ids)) and len(PROBES) >= 60, len(PROBES)
    for p in PROBES:
        assert p.surface in SURFACES, p
        assert p.fault and p.expected and "|" not in p.fault + p.expected, p


def test_the_troubleshooting_table_is_the_probe_list():
    """docs/troubleshooting.md's table of what was tried is generated from PROBES (scripts/probe_table.py)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("probe_table", ROOT / "scripts" / "probe_table.py")
    pt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pt)
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert pt.render(doc, PROBES) == doc, "docs/troubleshooting.md differs from the probes: python scripts/probe_table.py"


# ---------------------------------------------------------------------------- the probes can fail
def test_the_payload_runs_code_when_unpickled_without_restriction(tmp_path):
    """The crafted files are live: an unrestricted reader *does* write the marker."""
    marker = tmp_path / "CODE-RAN"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump(_Payload(marker), f)
    pickle.loads((tmp_path / "raw.pt").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("text,needles", [
    ("Traceback (most recent call last):\n  File x\nValueError: bad", ()),
    ("first line\nsecond line", ()),
    ("error: cannot read model.pt", ("other.pt",)),
    ("", ()),
])
def test_one_line_rejects_tracebacks_several_lines_and_missing_names(text, needles):
    with pytest.raises(AssertionError):
        one_line(text, *needles)


def test_error_line_rejects_two_error_lines_and_none():
    for err in ("error: a\nerror: b\n", "warning: only\n", "Traceback (most recent call last):\nerror: x\n"):
        with pytest.raises(AssertionError):
            error_line(err)
    assert error_line("downloading x\nerror: it failed\n", "failed") == "error: it failed"
