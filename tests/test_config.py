"""Profiles, overrides and the clear errors of bad configuration."""
import json

import pytest

from lib.infra.config import PROFILES, ConfigError, from_dict, get_config, toy_config, with_overrides


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_are_valid_and_round_trip(profile):
    cfg = get_config(profile)
    assert cfg.profile == profile
    assert from_dict(json.loads(cfg.to_json())) == cfg
    assert toy_config(cfg).model.kind == "mlp"


def test_paper_profile_holds_the_papers_settings():
    c = get_config("paper")
    assert (c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions, c.model.dropout) == \
        (128, (1, 2, 2, 2), 2, (16,), 0.1)
    assert (c.train.lr, c.train.batch_size, c.train.grad_clip, c.train.ema_decay) == (2e-4, 128, 1.0, 0.9999)
    assert (c.loss.skip, c.loss.tau, c.loss.same_noise) == (9, 0.99, False)
    assert (c.diffusion.T, c.diffusion.beta_start, c.diffusion.beta_end) == (1000, 1e-4, 0.02)


def test_overrides_are_typed():
    c = get_config("ci", ["train.steps=7", "loss.tau=0.5", "sample.steps=3,4", "data.random_flip=true"])
    assert (c.train.steps, c.loss.tau, c.sample.steps, c.data.random_flip) == (7, 0.5, (3, 4), True)
    assert get_config("ci", {"train.lr": 0.1}).train.lr == 0.1


@pytest.mark.parametrize("overrides,match", [
    (["train.stepz=3"], "valid keys in \\[train\\]"),
    (["trian.steps=3"], "section one of"),
    (["train.steps=abc"], "expected an integer"),
    (["train.steps=2.5"], "expected an integer"),
    (["train.steps=0"], "positive integer"),
    (["loss.skip=1000"], "1 <= skip < T"),
    (["loss.tau=1.5"], "tau must lie in \\[0, 1\\]"),
    (["sample.grid=cosine"], "uniform' or 'quad"),
    (["train.steps"], "section.key=value"),
    (["train.ema_rampup=-1"], "ema_rampup must be >= 0"),
    (["sample.steps=(5, 'x')"], "expected an integer"),
])
def test_bad_overrides_fail_with_a_clear_message(overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_config("ci", overrides)


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid profiles: ci, cpu, gpu, paper"):
        get_config("laptop")


def test_overrides_are_python_literals_checked_against_the_field_type():
    c = get_config("ci", ["model.ch_mult=(1, 2)", "sample.methods=ddim,pndm", "sample.steps=7", "train.steps=1e3",
                          "train.device='cpu'", "train.device=cuda", "train.lr=1"])
    assert c.model.ch_mult == (1, 2) and c.sample.methods == ("ddim", "pndm") and c.sample.steps == (7,)
    assert c.train.steps == 1000 and isinstance(c.train.steps, int) and c.train.device == "cuda"
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)


def test_toy_config_is_the_profile_with_the_toy_override_set():
    from lib.infra.config import toy_overrides, with_overrides

    for p in PROFILES:
        cfg = get_config(p)
        t = toy_config(cfg)
        assert t == with_overrides(cfg, toy_overrides(cfg))
        assert (t.model.kind, t.model.in_channels, t.model.hidden, t.data.dataset, t.train.steps) == \
            ("mlp", 2, cfg.toy.hidden, cfg.toy.dataset, cfg.toy.steps)
        assert (t.diffusion, t.loss, t.train.seed) == (cfg.diffusion, cfg.loss, cfg.train.seed)


def test_validation_covers_sections_generically():
    from dataclasses import replace

    from lib.infra.config import validate

    bad = replace(get_config("ci"), eval=replace(get_config("ci").eval, n_boot="many"))
    with pytest.raises(ConfigError, match="eval.n_boot: expected an integer"):
        validate(bad)


def test_a_run_config_with_invalid_json_names_the_file(tmp_path):
    from lib.infra.config import load_json

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        load_json(tmp_path / "config.json")


def test_every_profile_number_is_a_plain_setting_in_lib_infra_profiles():
    """A profile is data (section.key -> literal) over the schema's defaults; get_config builds exactly it."""
    from lib.infra import profiles

    for name, settings in profiles.PROFILE_SETTINGS.items():
        cfg = get_config(name)
        for key, value in settings.items():
            section, field = key.split(".")
            assert not callable(value) and getattr(getattr(cfg, section), field) == value, (name, key)
    assert set(profiles.NOTEBOOK_08) == set(profiles.PROFILE_SETTINGS)


def test_model_norm_groups_zero_is_the_width_rule_and_a_count_applies_to_every_layer():
    import torch

    from lib.factory import build_model
    from lib.unet import num_groups

    def groups(cfg):
        return {(m.num_channels, m.num_groups) for m in build_model(cfg.model).modules() if isinstance(m, torch.nn.GroupNorm)}
    ci = get_config("ci")
    assert ci.model.norm_groups == 4 and get_config("cpu").model.norm_groups == 4  # one count: every run exports
    assert {g for _, g in groups(ci)} == {4}
    rule = with_overrides(ci, {"model.norm_groups": 0})  # 0: lib.unet's width rule, 4 and 8 groups at widths 16/32
    assert groups(rule) == {(c, num_groups(c)) for c, _ in groups(rule)} and len({g for _, g in groups(rule)}) > 1
    with pytest.raises(ConfigError, match=r"model.norm_groups=3 must divide every width \[16, 32\]"):
        with_overrides(ci, {"model.norm_groups": 3})
    old = ci.to_dict()
    del old["model"]["norm_groups"]  # a config saved before the key existed still loads, as the width rule
    assert from_dict(old).model.norm_groups == 0


def test_cuda_profiles_never_fan_out_processes_onto_one_gpu():
    """At gpu/paper every worker process would train or sample on cuda:0: the experiment runs its steps one at
    a time (experiment.workers 1), and paper's runs spread over the GPUs through torchrun (train.nproc 0)."""
    from lib.infra import processes

    for name in ("gpu", "paper"):
        cfg = get_config(name)
        assert cfg.train.device == "cuda" and processes.n_workers(cfg.experiment.workers, 100) == 1, name
    assert get_config("paper").train.nproc == 0 and get_config("gpu").train.nproc == 1
    assert toy_config(get_config("paper")).train.nproc == 1  # the 2-D toy stays one process


def test_a_config_saved_before_the_experiment_keys_were_renamed_still_loads():
    from lib.infra.experiment_config import RENAMED

    cfg = get_config("cpu")
    saved = cfg.to_dict()
    for old, new in RENAMED.items():  # what a run saved before the rename holds
        saved["experiment"][old] = saved["experiment"].pop(new)
    assert from_dict(saved) == cfg
    with pytest.raises(ConfigError, match="not mappings"):
        from_dict({**saved, "experiment": [1, 2]})


@pytest.mark.parametrize("old", ["rho_top", "rho_bottom", "es_b", "es_k"])
def test_an_override_with_a_renamed_key_names_its_new_name(old):
    from lib.infra.experiment_config import RENAMED

    with pytest.raises(ConfigError, match=f"renamed experiment.{RENAMED[old]}"):
        get_config("ci", {f"experiment.{old}": (1.0,)})
