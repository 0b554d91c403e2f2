"""The command line: the reference's command lines mean what their authors intended, the recipe fills only unset
flags, --config sits between the two, and bad input ends in one line on stderr with exit status 2."""
import os
import re
import shlex
import subprocess
import sys

import pytest
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

import train_val
from lib.engine.classification.cli import get_args_parser, parse_args
from lib.engine.classification.recipe import resolve_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/data/root"


def resolved(argv):
    return resolve_args(parse_args(argv))


def script_commands(script, *extra, env=None):
    """The train_val.py argument lists a training script runs (its DRY_RUN mode prints them)."""
    env = dict(os.environ, DRY_RUN="1", DATA_ROOT=DATA, **(env or {}))
    out = subprocess.run(["sh", os.path.join(ROOT, script), *extra], env=env, capture_output=True, text=True,
                         check=True).stdout
    commands = [shlex.split(line) for line in out.splitlines()]
    assert all(command[:2] == ["python3", "train_val.py"] for command in commands)
    return [command[2:] for command in commands]


def test_train_snl_runs_the_three_reference_experiments():
    runs = {args.dataset: args for args in map(resolved, script_commands("train_snl.sh", "all"))}
    assert set(runs) == {"imagenet", "cifar100", "cifar10"}
    expected = {"imagenet": ("resnet", "50"), "cifar100": ("preresnet", "56"), "cifar10": ("preresnet", "20")}
    for dataset, args in runs.items():
        assert (args.backbone, args.arch) == expected[dataset]
        # The reference's type=bool made "--pretrained False" mean True, and type=list split --nl_layer.
        assert args.pretrained is False
        assert (args.nl_type, args.nl_nums, args.nl_layer) == ("snl", 1, ["1"])
        assert args.is_norm is True and args.is_sys is True
        assert args.checkpoints == "snl" and args.data_dir == DATA
        assert args.valid is False and args.isresume is False and args.resume == ""
    # The main job: plain "sh train_snl.sh" is the CIFAR-10 experiment alone.
    assert [resolved(c).dataset for c in script_commands("train_snl.sh")] == ["cifar10"]


def test_train_snl_passes_extra_flags_through():
    (argv,) = script_commands("train_snl.sh", "cifar100", "--dataset", "fake", "--epochs", "1")
    args = resolved(argv)
    assert (args.dataset, args.epochs, args.arch) == ("fake", 1, "56")
    (argv,) = script_commands("train_snl.sh", "--epochs", "2")  # no experiment name: cifar10
    assert (resolved(argv).dataset, resolved(argv).epochs) == ("cifar10", 2)
    bad = subprocess.run(["sh", os.path.join(ROOT, "train_snl.sh"), "cifar1O"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr


@pytest.mark.parametrize("experiment,dataset,arch,order", [
    ("blocks-cifar10", "cifar10", "20", ["a2", "nl", "snl", "ns", "cgnl", "dnl"]),
    ("blocks-cifar100", "cifar100", "56", ["a2", "nl", "ns", "cgnl", "dnl", "snl"])])
def test_block_comparison_experiments(experiment, dataset, arch, order):
    """train_snl.sh blocks-cifar10 / blocks-cifar100: the reference's train_all_CIFAR10.sh / _CIFAR100.sh runs, in
    their order."""
    runs = [resolved(argv) for argv in script_commands("train_snl.sh", experiment)]
    assert [args.nl_type for args in runs] == order
    for args in runs:
        assert (args.dataset, args.backbone, args.arch, args.nl_nums) == (dataset, "preresnet", arch, 1)
        assert args.checkpoints == args.nl_type and args.pretrained is False and args.nl_layer == ["1"]
        # Only snl asks for the normalized symmetric affinity; the others keep their blocks' defaults.
        switches = (True, True) if args.nl_type == "snl" else (None, None)
        assert (args.is_norm, args.is_sys) == switches


@pytest.mark.parametrize("value,expected", [("False", False), ("false", False), ("no", False), ("0", False),
                                            ("True", True), ("yes", True), ("1", True)])
def test_pretrained_words(value, expected):
    assert parse_args(["--pretrained", value]).pretrained is expected


def test_pretrained_path(tmp_path):
    path = str(tmp_path / "resnet50.pth")
    assert parse_args(["--pretrained", path]).pretrained == path


@pytest.mark.parametrize("argv,stages", [(["--nl_layer", "3"], ["3"]), (["--nl-layer", "1,2"], ["1", "2"]),
                                         (["--nl_layer", "1", "2"], ["1", "2"]), (["--nl_layer", "12"], ["1", "2"]),
                                         (["--nl_layer", "2,3", "1"], ["2", "3", "1"]), ([], ["1"])])
def test_nl_layer_spellings(argv, stages):
    assert resolved(["--dataset", "cifar10"] + argv).nl_layer == stages


@pytest.mark.parametrize("flag", ["--valid", "--isresume"])
def test_bool_flags_take_the_reference_values_and_work_as_switches(flag):
    dest = flag.lstrip("-")
    assert getattr(parse_args([flag, "True"]), dest) is True
    assert getattr(parse_args([flag, "False"]), dest) is False
    assert getattr(parse_args([flag, "--dataset", "fake"]), dest) is True
    assert getattr(parse_args([]), dest) is False


def test_no_type_bool_anywhere():
    actions = get_args_parser()._actions
    assert actions and all(action.type is not bool for action in actions)


def test_reference_flag_names_all_parse():
    args = parse_args(["-d", "-w", "-p", "7", "--data_dir", "d", "--dataset", "cifar10", "--valid", "False",
                       "--checkpoints", "c", "--num_gpu", "2", "--nl-nums", "1", "--nl-type", "nl", "--stage-nums",
                       "2", "--div", "4", "--nl_layer", "2", "--is_sys", "--is_norm", "--pretrained", "False",
                       "--backbone", "preresnet", "--arch", "56", "--lr", "0.05", "--isresume", "False",
                       "--resumename", "", "--check_path", ""])
    assert (args.debug, args.warmup, args.print_freq, args.num_gpu, args.stage_nums, args.div) == \
        (True, True, 7, 2, 2, 4.0)


def test_cifar_recipe():
    args = resolved(["--dataset", "cifar10"])
    assert (args.batch_size, args.lr, args.epochs, args.warmup_epochs, args.lr_steps) == \
        (128, 0.1, 310, 10, [160, 260])
    assert (args.eval_freq, args.seed, args.weight_decay, args.momentum) == (5, 67, 1e-4, 0.9)
    assert (args.backbone, args.arch, args.output_dir) == ("preresnet", "20", "save_model")
    assert args.workers == min(4, len(os.sched_getaffinity(0)))  # the reference's 4, capped by the cores here
    assert resolved(["--dataset", "cifar100"]).lr_steps == [160, 260]


def test_imagenet_recipe():
    args = resolved(["--dataset", "imagenet"])
    assert (args.batch_size, args.lr, args.epochs, args.lr_steps) == (100, 0.01, 110, [41, 71, 91])
    assert (args.backbone, args.arch) == ("resnet", "50")


def test_explicit_flags_win_over_the_recipe():
    args = resolved(["--dataset", "cifar10", "--lr", "0.05", "--epochs", "20", "--batch-size", "64", "--lr-steps",
                     "12", "15", "--warmup-epochs", "2", "--eval-freq", "1", "--seed", "3", "-j", "0"])
    assert (args.lr, args.epochs, args.batch_size, args.lr_steps) == (0.05, 20, 64, [12, 15])
    assert (args.warmup_epochs, args.eval_freq, args.seed, args.workers) == (2, 1, 3, 0)


def test_warmup_zero_turns_it_off_and_unshifts_the_recipe():
    args = resolved(["--dataset", "cifar10", "--warmup-epochs", "0"])
    assert (args.epochs, args.lr_steps) == (300, [150, 250])


def test_debug_mode_defaults():
    args = resolved(["--dataset", "cifar10", "-d"])
    assert (args.batch_size, args.workers) == (2, 0)
    assert resolved(["--dataset", "cifar10", "-d", "-b", "8"]).batch_size == 8


def test_config_file_sets_defaults_and_flags_still_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: cifar100\nlr: 0.02\nbatch-size: 32\nnl_layer: [2, 3]\narch: 56\nis_sys: true\n"
                      "no-download: true\namp: bf16\n")
    args = resolved(["--config", str(config), "--lr", "0.3"])
    assert (args.dataset, args.lr, args.batch_size, args.arch) == ("cifar100", 0.3, 32, "56")
    assert (args.nl_layer, args.is_sys, args.download, args.amp) == (["2", "3"], True, False, "bf16")
    assert args.epochs == 310  # not in the file: still the recipe's
    assert {"dataset", "lr", "batch_size", "nl_layer"} <= set(args.explicit)


@pytest.mark.parametrize("experiment", ["cifar10", "cifar100", "imagenet"])
def test_example_configs_are_the_reference_experiments(experiment):
    """configs/<experiment>_*.yaml resolves to the same arguments as train_snl.sh <experiment>."""
    config, = [name for name in os.listdir(os.path.join(ROOT, "configs")) if name.startswith(experiment + "_")]
    (argv,) = script_commands("train_snl.sh", experiment)
    from_script = vars(resolved(argv + ["--data_dir", "./data"]))
    from_config = vars(resolved(["--config", os.path.join(ROOT, "configs", config)]))
    ignored = {"explicit", "config"}
    assert {k: v for k, v in from_config.items() if k not in ignored} == \
        {k: v for k, v in from_script.items() if k not in ignored}


@pytest.mark.parametrize("text,message", [("bogus_key: 1\n", "unknown key"), ("lr: [1, 2]\n", "lr"),
                                          ("amp: fp8\n", "amp"), ("- a list\n", "mapping")])
def test_bad_config_files(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert exit_status(["--config", str(config), "--dataset", "fake"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _one_line_error(argv, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train_val.py"), *argv,
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # a refused run creates nothing
    return result.stderr


def test_bad_value_in_a_real_process(tmp_path):
    assert "unknown nl_type 'snl2'" in _one_line_error(["--dataset", "fake", "--nl-type", "snl2"], tmp_path)


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'"),
    (["--dataset", "fake", "--arch", "21"], "unknown arch '21'"),
    (["--dataset", "fake", "--backbone", "vgg"], "unknown backbone 'vgg'"),
    (["--dataset", "fake", "--nl-type", "gcnet"], "unknown nl_type 'gcnet'"),
    (["--dataset", "fake", "--nl_layer", "4"], "nl_layer"),
    (["--dataset", "fake", "--nl_layer", "a"], "--nl_layer"),
    (["--dataset", "fake", "--device", "gpu"], "--device"),
    (["--dataset", "fake", "--valid"], "--check_path"),
    (["--dataset", "fake", "--lr-steps", "5", "--warmup-epochs", "10"], "warm-up"),
    (["--dataset", "fake", "--is_sys", "maybe"], "boolean"),
    (["--dataset", "fake", "--amp", "fp8"], "--amp"),
    (["--dataset", "fake", "--epochs", "0"], "--epochs"),
    (["--dataset", "fake", "--momentum", "-1"], "--momentum must be in [0, 1)"),
    (["--dataset", "fake", "--lr", "inf"], "--lr must be a finite number"),
    (["--dataset", "fake", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--dataset", "fake", "--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--dataset", "fake", "--lr-gamma", "inf"], "--lr-gamma must be a finite number"),
    (["--dataset", "fake", "--div", "inf"], "--div must be a finite number"),
    (["--dataset", "fake", "--hflip", "1.5"], "--hflip is a probability"),
    (["--dataset", "fake", "--checkpoints", "../../x"], "--checkpoints must be a single folder name"),
    (["--dataset", "fake", "--checkpoints", "a/b"], "--checkpoints must be a single folder name"),
    (["--dataset", "fake", "--checkpoints", ".."], "--checkpoints must be a single folder name"),
])
def test_bad_values_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert exit_status(argv + ["--output-dir", str(tmp_path), "-j", "0", "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert os.listdir(tmp_path) == []


def exit_status(argv):
    """cli_main's status; argparse's own errors exit via SystemExit, which counts the same."""
    try:
        return train_val.cli_main(argv)
    except SystemExit as stop:
        return stop.code


def test_output_dir_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    for output_dir in (tmp_path / "afile", tmp_path / "afile" / "below"):
        assert exit_status(["--dataset", "fake", "--output-dir", str(output_dir)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / 'afile'} is a file, not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_yaml_syntax_error_keeps_line_and_column(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("dataset: fake\nlr: 0.1\nepochs: [1, 2\nseed: 3\n")
    assert exit_status(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid YAML" in err and "(line 4, column 5)" in err, err


@pytest.mark.parametrize("argv,folder", [
    (["--nl-type", "nl"], "nl"), (["--nl-type", "cgnl"], "cgnl"), ([], "snl"), (["--nl-nums", "0"], "base"),
    (["--nl-type", "none"], "base"), (["--nl-type", "nl", "--checkpoints", "mine"], "mine"),
])
def test_run_folder_defaults_to_the_block_name(argv, folder):
    assert resolved(["--dataset", "fake"] + argv).checkpoints == folder


def test_help_cites_only_the_projects_own_docs(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    # Every document --help names is one the repository has.
    cited = set(re.findall(r"[\w/.-]+\.md\b", text))
    assert all(os.path.isfile(os.path.join(ROOT, name)) for name in cited), cited
    assert "--hflip" in text
