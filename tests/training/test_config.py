"""The typed training configuration: YAML presets, overrides, deep-merged model blocks, typo rejection;
every value converted to its field's type and checked against its declaration, errors as one line
through the real commands."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from model.config import PRESETS, TINY_HUBERT, ModelConfig
from model.loss import LossWeights
from pipeline.data.config import LoaderConfig
from pipeline.data.mixing import MixConfig
from pipeline.fields import RULE, FieldError, Rule, check_fields
from training.config import ConfigError, TrainConfig, config_tree, load_config

ROOT = Path(__file__).resolve().parents[2]
RUN = CliRunner()


def test_a_model_block_is_deep_merged_over_its_preset():
    demo = load_config(ROOT / "configs" / "demo.yaml", [])
    backbone = demo.model.audio_backbone
    assert backbone == {
        **TINY_HUBERT,
        "feat_extract_norm": "group",
        "conv_dim": [32] * 4,
        "conv_stride": [10, 4, 4, 2],
        "conv_kernel": [20, 8, 4, 4],
    }
    assert demo.model == ModelConfig.preset("tiny", audio_backbone=backbone)
    deeper = load_config(ROOT / "configs" / "demo.yaml", ["model.audio_backbone.num_hidden_layers=3"])
    assert deeper.model.audio_backbone == {**backbone, "num_hidden_layers": 3}


def test_every_loader_option_is_a_typed_data_key():
    cfg = load_config(
        None,
        [
            "data.augment.scale=[0.2, 1]",
            "data.mix.level_db=[-30, -20]",
            "data.splice.prob=0.5",
            "data.masking.prob=0.25",
            "data.max_consecutive_skips=7",
            "data.clip_seconds=2.5",
        ],
    )
    d = cfg.data
    assert (d.augment.scale, d.mix.level_db, d.splice.prob, d.masking.prob) == ((0.2, 1), (-30, -20), 0.5, 0.25)
    assert (d.max_consecutive_skips, d.clip_samples) == (7, 40_000)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.mix.snr=[0, 1]", r"unknown config.data.mix keys \['snr'\]"),
        ("model.lora_rnk=4", "unknown ModelConfig fields"),
        ("model.preset=huge", "unknown model preset"),
        ("data.image_size=64", r"\['image_size'\] are set by the trainer"),
        ("loss.regularizers.tvv=1", r"unknown config.loss.regularizers keys \['tvv'\]"),
        ("steps", "must look like key.sub=value"),
    ],
)
def test_typos_and_trainer_owned_keys_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "tiny.yaml", [override])


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_the_written_config_reads_back_to_the_same_config(name, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["data.mix.snr_db=[1, 2]"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_tree(cfg), sort_keys=False))
    assert load_config(tmp_path / "config.yaml", []) == cfg


# ------------------------------------------------------------------ typed values (OmegaConf + declared ranges)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_values_that_crashed_a_run_are_converted(tmp_path):
    yaml_11 = tmp_path / "lr.yaml"
    yaml_11.write_text("model: paper\noptim:\n  lr: 1e-4\n  eps: 1e-8\n")  # YAML 1.1 reads both as strings
    cfg = load_config(yaml_11, [])
    assert (cfg.optim.lr, cfg.optim.eps) == (1e-4, 1e-8) and type(cfg.optim.lr) is float
    assert cfg.model == ModelConfig.preset("paper")
    assert load_config(None, ["model=paper"]).model == ModelConfig.preset("paper")
    assert load_config(None, ["model=tiny", "model.code_dim=8"]).model == ModelConfig.preset("tiny", code_dim=8)
    # model: NAME in the file, then a field of it on the command line
    assert load_config(yaml_11, ["model.code_dim=12"]).model == ModelConfig.preset("paper", code_dim=12)
    # values come back as the fields' types: tuples, ints from "3", floats from ints
    cfg = load_config(None, ["data.batch_size='3'", "optim.grad_clip=2", "data.mix.level_db=[-30, -20]"])
    assert (cfg.data.batch_size, cfg.optim.grad_clip, cfg.data.mix.level_db) == (3, 2.0, (-30.0, -20.0))
    assert type(cfg.optim.grad_clip) is float and type(cfg.data.mix.level_db) is tuple


@pytest.mark.parametrize(
    "override, line",
    [
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
        ("optim.betas=[0.9, 1.0]", "optim.betas must be a list, each in [0, 1), got [0.9, 1.0]"),
        ("steps=0", "steps must be >= 1, got 0"),
        ("steps=1.5", "steps must be an integer, got 1.5"),
        ("mosaic_prob=2", "mosaic_prob must be in [0, 1], got 2.0"),
        ("mixed_precision=fp8", "mixed_precision must be one of auto, no, bf16, fp16, got 'fp8'"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("data.clip_seconds=12", "data.clip_seconds must be in (0, 10], got 12.0"),
        ("data.epoch_samples=0", "data.epoch_samples must be >= 1, got 0"),
        ("data.speech=[a, b]", "data.speech must be a string, got ['a', 'b']"),
        ("data.augment.flip_prob=1.5", "data.augment.flip_prob must be in [0, 1], got 1.5"),
        ("data.augment.scale=[0.5]", "data.augment.scale must be a list of 2 numbers, got [0.5]"),
        ("data.mix.snr_db=[5, -5]", "data.mix.snr_db must be a [low, high] pair with low <= high, got [5.0, -5.0]"),
        ("data.splice.prob=-0.1", "data.splice.prob must be in [0, 1], got -0.1"),
        ("loss.regularizers.tv=-1", "loss.regularizers.tv must be >= 0, got -1.0"),
        ("loss.correspondence_heads=sum", "loss.correspondence_heads must be max or own, got 'sum'"),
        ("model.attn_implementation=flash", "model.attn_implementation must be eager or sdpa, got 'flash'"),
        ("model.audio_pool=[]", "model.audio_pool must be a non-empty list, each >= 1, got []"),
        ("model.sound_head=5", "model: sound_head=5 is outside 0..1"),
        ("model=huge", "unknown model preset 'huge' at model.preset; accepted: paper, tiny"),
        ("val.pairs=none", "val.pairs must be an integer, got 'none'"),
        ("out_dir=runs/${seed}", "out_dir must be a literal value, got the interpolation 'runs/${seed}'"),
        (
            "log_with=tensorbord",
            "log_with must be a non-empty list whose items are each one of tensorboard, wandb, "
            "comet_ml, mlflow, aim, clearml, dvclive, swanlab, trackio, all, none, got ['tensorbord']",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_accepted(override, line):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "tiny.yaml", [override])
    assert str(err.value) == f"{line} (from the override {override!r})"


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  mix: {level_db: [-10, 5]}\n")
    with pytest.raises(
        ConfigError,
        match=r"^data\.mix\.level_db must be a \[low, high\] pair with low <= high, "
        r"each <= 0, got \[-10\.0, 5\.0\] \(in .*run\.yaml\)$",
    ):
        load_config(path, [])
    path.write_text("optim: [1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml is not a readable YAML config: .*line 2"):
        load_config(path, [])


def test_loader_config_checks_itself_and_its_sections():
    with pytest.raises(FieldError, match=r"^batch_size must be >= 1, got 0$"):
        LoaderConfig(batch_size=0)
    with pytest.raises(FieldError, match=r"^mix\.snr_db must be a \[low, high\] pair"):
        LoaderConfig(mix=MixConfig(snr_db=(5.0, -5.0)))
    with pytest.raises(FieldError, match=r"^regularizers\.mixup must be >= 0, got -1"):
        LossWeights(regularizers=type(LossWeights().regularizers)(mixup=-1))


def test_every_declaration_is_a_rule_and_every_default_keeps_it():
    def sections(cls):
        yield cls
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                yield from sections(type(sub))

    declared = 0
    for cls in sections(TrainConfig):
        for f in dataclasses.fields(cls):
            assert set(f.metadata) <= {RULE}, (cls.__name__, f.name, dict(f.metadata))
            declared += RULE in f.metadata and isinstance(f.metadata[RULE], Rule)
    assert declared >= 60
    check_fields(TrainConfig())
    for name in PRESETS:  # the presets are built (and checked) like any config
        load_config(None, [f"model={name}"])


def test_every_shipped_config_loads_and_reads_back(tmp_path):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path, [])
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_tree(cfg), sort_keys=False))
        assert load_config(tmp_path / "config.yaml", []) == cfg, path.name


# ------------------------------------------------------------------ extends


def test_a_config_extends_a_chain_of_files_merged_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: tiny\nlog_with: wandb\nsteps: 7\n"
        "data: {speech: s, sound: a, batch_size: 4, mix: {snr_db: [0, 5], level_db: [-30, -20]}}\n"
    )
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ndata: {mix: {snr_db: [1, 2]}}\nsteps: 8\n")
    (tmp_path / "sub").mkdir()
    top = tmp_path / "sub" / "top.yaml"  # the base's path is relative to the file that names it
    top.write_text("extends: ../mid.yaml\nmodel: {code_dim: 8}\ndata:\nlog_with: [none]\nout_dir: x\n")
    cfg = load_config(top, [])
    assert cfg.model == ModelConfig.preset("tiny", code_dim=8)  # a mapping over the base's preset name
    assert (cfg.data.speech, cfg.data.batch_size, cfg.data.mix.snr_db, cfg.data.mix.level_db) == (
        "s",
        4,
        (1, 2),
        (-30, -20),
    )
    assert (cfg.steps, cfg.log_with, cfg.out_dir) == (8, ["none"], "x")  # an empty data: sets nothing
    assert config_tree(cfg) == config_tree(
        load_config(tmp_path / "mid.yaml", ["model.code_dim=8", "log_with=none", "out_dir=x"])
    )
    # model: NAME replaces the base's whole block, as the override model=NAME does
    top.write_text("extends: ../mid.yaml\nmodel: tiny\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nmodel: {preset: tiny, code_dim: 8}\n")
    assert load_config(top, []).model == ModelConfig.preset("tiny")
    # a bad value names the file of the chain that set it
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\noptim: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"^optim\.lr must be > 0, got -1\.0 \(in \S+/sub/\.\./mid\.yaml\)$"):
        load_config(top, [])


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {"a.yaml": "extends: nothere.yaml\n"},
            "{a}: extends nothere.yaml, and there is no such config file ({d}/nothere.yaml); "
            "give a path relative to {d}",
        ),
        (
            {"a.yaml": "extends: a.yaml\n"},
            "{a}: extends a.yaml makes a cycle ({a} -> {a}); one of these files must not extend",
        ),
        (
            {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\nsteps: 2\n"},
            "{b}: extends a.yaml makes a cycle ({a} -> {b} -> {a}); one of these files must not extend",
        ),
        (
            {"a.yaml": "extends: [b.yaml]\n"},
            "{a}: extends must be the path of the config file this one starts from (relative to {d}), got ['b.yaml']",
        ),
    ],
)
def test_extends_refuses_a_missing_base_a_cycle_and_a_non_path_in_one_line(tmp_path, files, message):
    import train

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    line = _one_error_line(RUN.invoke(train.app, ["--config", str(tmp_path / "a.yaml")]))
    paths = {"a": tmp_path / "a.yaml", "b": tmp_path / "b.yaml", "d": tmp_path}
    assert line == "error: " + message.format(**paths)


def test_the_commands_say_a_config_error_in_one_line_before_loading_a_backbone(tmp_path):
    import evaluate
    import pretrain_audio
    import train

    # configs/paper.yaml loads pretrained backbones, which HF_HUB_OFFLINE would refuse: the line
    # below comes first
    line = _one_error_line(RUN.invoke(train.app, ["--config", str(ROOT / "configs/paper.yaml"), "optim.lr=-1e-4"]))
    assert line == "error: optim.lr must be > 0, got -0.0001 (from the override 'optim.lr=-1e-4')"
    line = _one_error_line(RUN.invoke(train.app, ["data.batch_size=8"]))
    assert line.startswith("error: train.py needs --config: configs/paper.yaml")
    line = _one_error_line(RUN.invoke(train.app, ["--config", str(tmp_path / "missing.yaml")]))
    assert "missing.yaml: no such config file" in line
    # model=paper parsed (it died in dict() before), and the next key is checked
    tiny = str(ROOT / "configs/tiny.yaml")
    line = _one_error_line(RUN.invoke(train.app, ["--config", tiny, "model=paper", "steps=0"]))
    assert line == "error: steps must be >= 1, got 0 (from the override 'steps=0')"
    line = _one_error_line(
        RUN.invoke(
            pretrain_audio.app,
            [
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--shards",
                "x",
                "--out",
                str(tmp_path / "w.safetensors"),
                "data.clip_seconds=0",
            ],
        )
    )
    assert line == "error: data.clip_seconds must be in (0, 10], got 0.0 (from the override 'data.clip_seconds=0')"
    assert "needs --config" in _one_error_line(
        RUN.invoke(pretrain_audio.app, ["--shards", "x", "--out", str(tmp_path / "w.safetensors")])
    )
    line = _one_error_line(
        RUN.invoke(evaluate.app, ["--preset", "huge", "--out", str(tmp_path / "e"), "table1", "--is3", str(tmp_path)])
    )
    assert line == "error: --preset must be paper or tiny, got 'huge'"
    assert not (tmp_path / "e").exists() and not (tmp_path / "w.safetensors").exists()


def test_a_run_from_a_yaml_11_float_and_a_named_preset_writes_a_config_that_reads_back(shards, tmp_path):
    import train

    path = tmp_path / "run.yaml"
    path.write_text("model: paper\noptim:\n  lr: 1e-4\n  lr_warmup_steps: 1\n")
    out = tmp_path / "run"
    overrides = [
        "model=tiny",
        "model.code_dim=8",
        f"data.speech={shards.root / 'speech'}",
        f"data.sound={shards.root / 'sound'}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.clip_seconds=1.0",
        "data.shuffle_buffer=4",
        f"out_dir={out}",
        "steps=1",
        "warmup_steps=1",
        "log_every=1",
        "ckpt_every=0",
    ]
    result = RUN.invoke(train.app, ["--config", str(path), *overrides])
    assert result.exit_code == 0, (result.output, result.exception)
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["optim"]["lr"] == 1e-4 and written["model"]["name"] == "tiny" and written["model"]["code_dim"] == 8
    assert load_config(out / "config.yaml", []) == load_config(path, overrides)


# ------------------------------------------------------------------ trackers (log_with)


def test_log_with_takes_one_tracker_or_a_list_of_accelerates():
    from accelerate.utils import LoggerType

    from training.config import TRACKERS

    assert set(TRACKERS) == {t.value for t in LoggerType} | {"none"}, "the choices follow Accelerate's trackers"
    tiny = ROOT / "configs" / "tiny.yaml"
    assert load_config(tiny, []).log_with == ["tensorboard"]
    assert load_config(tiny, ["log_with=wandb"]).log_with == ["wandb"]
    assert load_config(tiny, ["log_with=[tensorboard, mlflow]"]).log_with == ["tensorboard", "mlflow"]


def test_a_tracker_without_its_package_stops_train_py_in_one_line_before_anything_loads(shards, tmp_path):
    from accelerate.tracking import get_available_trackers

    import train
    from training.config import TRACKERS
    from training.loop import trackers

    installed = {str(t) for t in get_available_trackers()}
    missing = [t for t in TRACKERS if t not in installed | {"all", "none"}]
    if not missing:
        pytest.skip("every tracker Accelerate knows is installed here")
    out = tmp_path / "run"
    data = [f"data.speech={shards.root / 'speech'}", f"data.sound={shards.root / 'sound'}", f"out_dir={out}"]
    line = _one_error_line(
        RUN.invoke(
            train.app, ["--config", str(ROOT / "configs/tiny.yaml"), *data, f"log_with=[tensorboard, {missing[0]}]"]
        )
    )
    assert line == (
        f"error: log_with: the {missing[0]} tracker needs the package {missing[0]}, which is not "
        f"installed; pip install {missing[0]}, or pick another tracker (log_with=tensorboard, or none)"
    )
    assert not out.exists()
    with pytest.raises(ConfigError, match="none logs nothing and cannot be combined"):
        trackers(["none", "tensorboard"])
    assert trackers(["none"]) is None and trackers(["all"]) == ["all"]
