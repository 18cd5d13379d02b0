"""The run directory of lib.train: claimed by one process, swept, fingerprinted, and never stale.

    DIR/.lock          held (fcntl.flock) by the process training DIR; the OS releases it when that
                       process dies, even by SIGKILL, so a killed run never leaves DIR stuck
    DIR/config.json    the run's configuration
    DIR/run.json       arm, the training code's fingerprint, the overrides of the profile, environment
    DIR/ckpt-*.pt      checkpoints (each records its arm, config and code fingerprint)
    DIR/final.pt       the EMA weights (a state dict), and DIR/final.json: the step, arm, config and
                       code fingerprint it belongs to and its sha256; a final.pt is served only when
                       final.json matches it and the run's config.json
    DIR/seed.json      a fine-tune's start (:func:`seed`): the checkpoint copied in
    DIR/superseded/    earlier runs of DIR made by other code or another profile definition, moved
                       aside (never deleted) before DIR is trained again

The code fingerprint is lib.recipe.training_code: the functions and classes a training step executes,
as normalised syntax trees (lib.infra.fingerprint; comments, docstrings, messages and the runner do not
count). The configuration is compared by its values, which is what config.py and profiles.py contribute.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import warnings
from pathlib import Path

from lib.infra import checkpoint as ckpt
from lib.infra.config import PROFILES, Config, ConfigError, from_dict, load_json, toy_config

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented in docs/troubleshooting.md)
    fcntl = None

# Keys that may change between a run and its resumption: they do not alter the trajectory.
RESUMABLE_KEYS = {"train.steps", "train.ckpt_every", "train.log_every", "train.keep_ckpts", "train.device",
                  "train.compile", "data.root", "data.download", "sample", "eval", "toy", "experiment", "profile"}
MOVABLE = ("config.json", "run.json", "loss.csv", "final.pt", "final.json", "seed.json")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked: the message says what, where and what to do."""


# ---------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def claim(out: Path):
    """Hold ``out`` for this process (creating it); a second claimant fails at once naming the holder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory: give a directory for the run")
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not yet said which"
            raise RunDirError(f"{out} is being trained by {holder}: wait for it to finish, or train into another "
                              f"--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since "
                      f"{datetime.datetime.now().isoformat(timespec='seconds')})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------- configurations
def trajectory_diff(old: dict, new: dict) -> list[str]:
    """The ``section.key`` names whose values differ between two config dicts (JSON lists and tuples
    alike; a key missing from one is its default), resumable keys aside."""
    defaults = Config().to_dict()

    def value(d, key):  # a key a saved config predates has the value it had then: the default
        s, k = key.split(".")
        v = d.get(s, {}).get(k, defaults.get(s, {}).get(k) if isinstance(defaults.get(s), dict) else None)
        return tuple(v) if isinstance(v, list) else v

    keys = {f"{s}.{k}" for d in (old, new) for s, sec in d.items() if isinstance(sec, dict) for k in sec}
    return sorted(k for k in keys if k not in RESUMABLE_KEYS and k.split(".")[0] not in RESUMABLE_KEYS
                  and value(old, k) != value(new, k))


def profile_overrides(cfg: Config) -> dict:
    """What ``cfg`` changes on its profile (or on the profile's toy experiment, for the MLP), as
    ``{key: value}``: a run whose profile definition changed since has the same overrides."""
    if cfg.profile not in PROFILES:
        return {}
    ref = PROFILES[cfg.profile]()
    ref = toy_config(ref) if cfg.model.kind == "mlp" else ref
    a, b = ref.to_dict(), cfg.to_dict()
    return _jsonable({k: b[k.split(".")[0]][k.split(".")[1]] for k in trajectory_diff(a, b)})


def read_json(path: Path) -> dict | None:
    """A run file's JSON, None when absent; invalid JSON is a RunDirError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if Path(path).name == "final.json":  # derived from the run's last checkpoint: rebuilt, nothing lost
            raise RunDirError(f"{path} is not valid JSON ({e}): delete it, and the run's training command rebuilds "
                              f"it and final.pt from the last checkpoint") from None
        raise RunDirError(f"{path} is not valid JSON ({e}): restore it, or delete {Path(path).parent} to train "
                          f"the run again") from None


# ---------------------------------------------------------------------------- the state of a directory
def check_reusable(out: Path, cfg: Config, arm: str, code: dict) -> str | None:
    """Compare ``out``'s earlier run with the one asked for. Returns None (same run: resume or reuse),
    or the reason the earlier run is stale (other code, or the profile's definition changed); raises
    ConfigError when it is another run (other arm or other overrides)."""
    run = read_json(out / "run.json")
    if run is not None and run.get("arm") != arm:
        raise ConfigError(f"{out} holds a run of arm {run.get('arm')!r}, not {arm!r}; use another --out directory")
    if (out / "config.json").exists():
        old = load_json(out / "config.json").to_dict()
        diff = trajectory_diff(old, cfg.to_dict())
        if diff:
            if old.get("profile") != cfg.profile:  # another profile is another run, not a changed definition
                raise ConfigError(f"{out} holds a run of profile {old.get('profile')!r}, not {cfg.profile!r} (they "
                                  f"differ in {', '.join(diff)}); train profile {cfg.profile!r} into another --out "
                                  f"directory, or resume it with --profile {old.get('profile')}")
            if run is None or run.get("overrides") != profile_overrides(cfg):
                raise ConfigError(f"{out} holds a run with a different configuration ({', '.join(diff)}); resume it "
                                  f"with the same settings, or train into a new --out directory")
            return f"the definition of profile {cfg.profile!r} changed since it was trained ({', '.join(diff)})"
    if run is not None and run.get("code") != code:
        old = run.get("code") or {}
        changed = sorted(k for k in set(old) | set(code) if old.get(k) != code.get(k))
        named = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        return f"the training code changed since it was trained ({named})"
    if run is None and ((out / "final.pt").exists() or (out / "config.json").exists()):
        return "it has no run.json, so the code that trained it is unknown"
    return None


def supersede(out: Path, reason: str) -> Path:
    """Move ``out``'s run files (checkpoints included) into ``out/superseded/<time>/`` and say why."""
    dest = out / "superseded" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    dest.mkdir(parents=True)
    for p in [*ckpt.list_checkpoints(out), *(out / n for n in MOVABLE)]:
        if p.exists():
            os.replace(p, dest / p.name)
    warnings.warn(f"{out}: {reason}; its earlier run is kept in {dest} (delete it to free space) and the run is "
                  f"trained again from the start", stacklevel=3)
    return dest


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def write_run_files(out: Path, cfg: Config, arm: str, code: dict, extra: dict):
    ckpt.atomic_write_text(out / "config.json", cfg.to_json())
    ckpt.atomic_write_text(out / "run.json", json.dumps({"arm": arm, "code": code,
                                                         "overrides": profile_overrides(cfg), **extra},
                                                        indent=2))


def kept_init(out: Path, init_record: dict | None, start: int) -> dict:
    """run.json's ``init_from`` entry: this start's record, else (a resumed fine-tune, started without
    --init-from) the one run.json already holds, since the checkpoint it resumes carries those weights."""
    if init_record is None and start > 0:
        init_record = (read_json(out / "run.json") or {}).get("init_from")
    return {"init_from": init_record} if init_record else {}


# ---------------------------------------------------------------------------- checkpoint provenance
def seed(src_run, dst_run) -> int:
    """Copy the newest checkpoint of ``src_run`` into ``dst_run`` as the start of a fine-tune (recorded
    in ``seed.json``, so lib.train resumes from it under another arm or config). Returns its step, or
    -1 when ``dst_run`` already holds checkpoints."""
    dst = Path(dst_run)
    if ckpt.list_checkpoints(dst):
        return -1
    src = ckpt.list_checkpoints(src_run)
    if not src:
        raise FileNotFoundError(f"{src_run} holds no training checkpoint to start from; train it first (notebook 03_train)")
    step = int(ckpt.CKPT_RE.match(src[-1].name).group(1))
    dst.mkdir(parents=True, exist_ok=True)
    copy = ckpt.ckpt_path(dst, step)
    shutil.copyfile(src[-1], copy)
    ckpt.atomic_write_text(dst / "seed.json", json.dumps({"source": str(Path(src_run).resolve()), "file": copy.name,
                                                          "step": step, "sha256": ckpt.sha256(copy)}, indent=2))
    return step


def reseed(out: Path) -> int:
    """After :func:`supersede`: seed ``out`` again from the source its moved-aside seed.json named."""
    moved = sorted((out / "superseded").glob("*/seed.json"))
    s = read_json(moved[-1]) if moved else None
    return seed(s["source"], out) if s and Path(s["source"]).is_dir() else -1


def mismatch(state: dict, path: Path, cfg: Config, arm: str, code: dict) -> list[str]:
    """Why checkpoint ``state`` (read from ``path``) cannot continue this run: [] when it can.
    The start of a fine-tune (named in seed.json with its sha256) may come from another arm or config."""
    theirs = state.get("code") or {}
    s = read_json(path.parent / "seed.json")
    if s and s.get("file") == path.name and s.get("sha256") == ckpt.sha256(path):
        # another arm executes other modules: the ones both runs execute must be the same code
        shared = set(theirs) & set(code)
        return [] if shared and all(theirs[k] == code[k] for k in shared) else ["code"]
    why = [] if theirs == code else ["code"]
    if state.get("arm") != arm:
        why.append(f"arm {state.get('arm')!r}")
    try:
        why += trajectory_diff(from_dict(state.get("config") or {}).to_dict(), cfg.to_dict())
    except ConfigError as e:
        why.append(f"config ({e})")
    return why


# ---------------------------------------------------------------------------- final.pt
def vanished(out: Path) -> RunDirError:
    """The run folder (or its config.json/run.json) was deleted while its training ran."""
    return RunDirError(f"the run folder {out} was deleted (or emptied) while it trained, so nothing written "
                       f"there is a run's result: run the same command again to train it anew")


def write_final(out: Path, ema_state: dict, step: int, cfg: Config, arm: str, code: dict) -> Path:
    """``final.pt`` (the EMA state dict), read back to verify it, then ``final.json`` naming its sha256;
    refused (:func:`vanished`) when the folder lost its config.json or run.json while training ran."""
    if not ((out / "config.json").is_file() and (out / "run.json").is_file()):
        raise vanished(out)
    final = ckpt.atomic_save(ema_state, out / "final.pt")
    ckpt.safe_load(final)  # a torn write is caught here, not by a later reader
    ckpt.atomic_write_text(out / "final.json", json.dumps({
        "step": step, "arm": arm, "config": cfg.to_dict(), "code": code, "sha256": ckpt.sha256(final)}, indent=2))
    return final


def final_problem(out: Path, cfg: Config, arm: str | None = None) -> str | None:
    """None when ``out/final.pt`` is the verified result of the run ``cfg`` describes, else what is wrong."""
    final, meta = out / "final.pt", read_json(out / "final.json")
    if not final.exists():
        return "it has no final.pt (training has not finished)"
    if meta is None:
        return "final.pt has no final.json (written by an older version, or training was killed while finishing)"
    if meta.get("step") != cfg.train.steps:
        return (f"final.pt holds step {meta.get('step')} but the run's config asks for train.steps={cfg.train.steps} "
                f"(an unfinished extension)")
    if arm is not None and meta.get("arm") != arm:
        return f"final.pt is of arm {meta.get('arm')!r}, not {arm!r}"
    diff = trajectory_diff(meta.get("config") or {}, cfg.to_dict())
    if diff:
        return f"final.pt was trained with another configuration ({', '.join(diff)})"
    if meta.get("sha256") != ckpt.sha256(final):
        return "final.pt does not match the checksum in final.json (torn or replaced)"
    return None


def verified_final(run_dir) -> tuple[Config, Path]:
    """``(config, final.pt)`` of a finished run, after the final.json check (:func:`final_problem`):
    the one gate every reader of a run's weights passes (lib.generate, lib.pretrained, notebook 08)."""
    run_dir = Path(run_dir)
    if (run_dir / "final.pt").exists() and not (run_dir / "final.pt").is_file():
        raise ckpt.CheckpointError(f"{run_dir / 'final.pt'} is not a file (a directory?): remove it and run the "
                                   f"run's training command again (it rebuilds final.pt from its last checkpoint)")
    if not (run_dir / "final.pt").exists() or not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished run (need config.json and final.pt); "
                                f"train it first (python -m lib.train ... --out {run_dir}, or notebook 03_train)")
    cfg = load_json(run_dir / "config.json")
    try:
        problem = final_problem(run_dir, cfg)
    except RunDirError as e:  # an unreadable final.json
        problem = str(e)
    if problem:
        raise ckpt.CheckpointError(f"{run_dir} is not a finished run: {problem}. Run its training command again "
                                   f"(it resumes or verifies), or notebook 03_train")
    return cfg, run_dir / "final.pt"


def load_run(run_dir, map_location="cpu"):
    """A finished run's ``(config, ema_state_dict)``; refuses a final.pt that is not the verified result
    of the run's config.json (stale, torn, unfinished)."""
    cfg, final = verified_final(run_dir)
    return cfg, ckpt.safe_load(final, map_location)
