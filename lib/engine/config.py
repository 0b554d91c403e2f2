"""Reading the command line: --config YAML defaults, then flags, remembering which values were given explicitly.

Precedence, lowest first: parser defaults < the task's recipe (fills only unset values) <
--config FILE.yaml < command-line flags.
"""
import argparse

import yaml

from lib.engine.cli import parse_bool
from lib.errors import ConfigError


def _option_names(parser):
    """{'batch-size': action, 'batch_size': action, 'b': action, ...}: every spelling a YAML key may use."""
    names = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        for name in [action.dest] + [option.lstrip("-") for option in action.option_strings]:
            names[name] = names[name.replace("-", "_")] = names[name.replace("_", "-")] = action
    return names


def _coerce(action, key, value):
    """A YAML value as the flag's parser would have produced it from text."""
    def fail(message):
        return ConfigError(f"config key {key!r}: {message}")

    def convert(item):
        if item is None:
            return None
        if action.type is None:  # a plain string flag: arch: 20 in YAML means '20'
            return item if isinstance(item, str) else str(item)
        if action.type in (int, float) and (isinstance(item, bool) or isinstance(item, (list, dict))):
            raise fail(f"expected a number, got {item!r}")
        if action.type is int and isinstance(item, float) and not item.is_integer():
            raise fail(f"expected an integer, got {item!r}")
        try:
            return action.type(item)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise fail(error) from None

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        try:  # a switch in YAML is written as true / false
            flag = parse_bool(value)
        except argparse.ArgumentTypeError as error:
            raise fail(error) from None
        # "no-download: true" names the switch, "download: false" names the value it sets.
        names_switch = str(key).lstrip("-") != action.dest
        return not flag if isinstance(action, argparse._StoreFalseAction) and names_switch else flag
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):  # lists; a fixed count is checked by the recipe
        value = [convert(item) for item in (value if isinstance(value, list) else [value])]
    else:
        value = convert(value)
    if action.choices is not None and value not in action.choices:
        raise fail(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _yaml_problem(error):
    """'mapping values are not allowed here (line 3, column 8)': what PyYAML found wrong, and where."""
    problem = getattr(error, "problem", None) or (str(error).splitlines() or [type(error).__name__])[0]
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def load_config(path, parser):
    """{dest: value} from a YAML mapping whose keys are flag names (with or without dashes, - or _)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of flag names to values, not a {type(data).__name__}")
    names = _option_names(parser)
    unknown = [str(key) for key in data if str(key).lstrip("-") not in names]
    if unknown:
        raise ConfigError(f"config {path}: unknown key(s) {', '.join(unknown)} (keys are {parser.prog} flag names)")
    values = {}
    for key, value in data.items():
        action = names[str(key).lstrip("-")]
        values[action.dest] = _coerce(action, key, value)
    return values


def _given_on_command_line(argv, make_parser):
    """dests the command line sets: parse once more with every default suppressed, so only given flags remain."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def parse_flags(argv, make_parser):
    """The Namespace for main(): flags over --config over parser defaults; args.explicit lists what was given.

    make_parser builds the entry point's parser. The recipe is not applied here (main does it, e.g. through
    lib.engine.classification.recipe.resolve_args), so that a Namespace built by any means can be passed to main().
    """
    parser = make_parser()
    args = parser.parse_args(argv)  # parse errors first: one line, exit 2
    explicit = _given_on_command_line(argv, make_parser)
    if args.config:
        values = load_config(args.config, parser)
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
        explicit |= set(values)
    args.explicit = sorted(explicit - {"config"})
    return args
