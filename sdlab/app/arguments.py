"""The typed command line made ready for Hydra: texts quoted, prompt files expanded, unknown keys refused."""

from __future__ import annotations

import argparse
import functools
import re
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import NoReturn

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, QuotedString
from hydra.errors import HydraException
from omegaconf import OmegaConf

from sdlab.bench.ownership import abandoned_sweeps, check_job_name, check_owned, check_run_dir, checked_root, confined
from sdlab.bench.run import load_params
from sdlab.bench.resume import earlier_sweep
from sdlab.conf_files import CONF_DIR, conf_values, default_choices, group_options, known_keys, option_values
from sdlab.config import clash, limits, suggestion
from sdlab.errors import UserError, near_miss, repeats
from sdlab.untrusted import read_prompt_lines

GROUPS = ("model", "scheduler", "clip", "experiment")
FREE_TEXT_KEYS = ("prompt", "negative_prompt")  # one literal string each, commas and brackets included
PROMPT_LIST_KEYS = ("prompts", "compare.prompts")  # the recipes' lists of prompts, each one literal text too
PROMPT_FILE_KEY = "prompt_file"  # a text file of prompts, one per line: one job per prompt under -m
INTERPOLATION = re.compile(r"(\\*)\$\{")  # `${` and the backslashes before it
ESCAPED_INTERPOLATION = re.compile(r"(?<!\\)((?:\\\\)*)\\\$\{")  # what `literal` makes of it
RECIPES_ROOT = Path("outputs") / "experiments"  # where a sweep over recipes lands
RECIPES_SWEEP_DIR = f"hydra.sweep.dir='{RECIPES_ROOT}/multirun_${{now:%Y-%m-%d_%H-%M-%S}}'"  # see default_sweep_dir
RECIPES_SUBDIR = "hydra.sweep.subdir='${job_folder:${hydra.job.num}}_${hydra.runtime.choices.experiment}'"
OUTPUT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")  # the folders a run or sweep writes into
SWEEP_FUNCTIONS = ("glob(", "choice(", "range(", "interval(", "tag(", "sort(", "shuffle(")
# Hydra's own flags (hydra.main's `--help` page lists them): switches, and flags that take a value.
SWITCHES = (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m"),
            ("--shell-completion", "-sc"))
VALUED = {("--package", "-p"): {}, ("--config-path", "-cp"): {}, ("--config-name", "-cn"): {},
          ("--config-dir", "-cd"): {}, ("--experimental-rerun",): {},
          ("--cfg", "-c"): {"choices": ["job", "hydra", "all"]},
          ("--info", "-i"): {"nargs": "?", "const": "all",
                             "choices": ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]}}
FLAGS_WITH_VALUE = tuple(name for names in VALUED for name in names)
LONG_FLAGS = tuple(name for names in (*SWITCHES, *VALUED) for name in names if name.startswith("--"))
MODES = {"run": "--run", "multirun": "--multirun", "cfg": "--cfg", "info": "--info",
         "shell_completion": "--shell-completion"}  # Hydra runs one of these at a time
def split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra flags with their values, overrides) of a command line."""
    flags, overrides, args = [], [], iter(argv)
    for arg in args:
        if arg.startswith("-"):
            flags += [arg, *islice(args, 1)] if arg in FLAGS_WITH_VALUE else [arg]
        else:
            overrides.append(arg)
    return flags, overrides


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra string that parses back to exactly `text`."""
    escaped = re.sub(r"\\+(?='|$)", lambda m: m.group(0) * 2, text)
    return "'" + escaped.replace("'", "\\'") + "'"


def unescape_interpolation(text: str) -> str:
    """The text `literal` was given: what OmegaConf resolves the escaped string to."""
    return ESCAPED_INTERPOLATION.sub(lambda m: m.group(1)[: len(m.group(1)) // 2] + "${", text)


def literal(text: str) -> str:
    """`text` as a Hydra value that reaches the job as exactly `text`: quoted, every `${` escaped as OmegaConf reads it
    (`\\${`, backslashes before it doubled), so never an interpolation."""
    return hydra_quote(INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", text))


def quote_text(arg: str) -> str:
    """`prompt=a, b (c:1)` -> `prompt='a, b (c:1)'`, `prompts=[a,${x}]` -> `prompts=['a','\\${x}']`: literal text."""
    key, sep, value = arg.partition("=")
    free = key.lstrip("+") in FREE_TEXT_KEYS
    if not sep or not (free or key.lstrip("+") in PROMPT_LIST_KEYS):
        return arg
    if free and value[:1] not in ("'", '"'):
        return f"{key}={literal(value)}"
    try:
        parsed = override_parser().parse_override(arg).value()
    except Exception:  # noqa: BLE001 - check_syntax names what Hydra cannot read
        return arg
    # Each text (or list of texts) of a value or of an untagged sweep, read as OmegaConf would read the quoted text
    # (`\${` is `${`), so a prepared command line prepares to itself; a list key's other values are left to Hydra.
    items = parsed.list if isinstance(parsed, ChoiceSweep) and not parsed.tags else [parsed]
    texts = [literal_texts(item, free) for item in items]
    if None not in texts:
        return f"{key}=" + ",".join(texts)
    if not free:
        return arg
    raise UserError(f"{arg}: {key.lstrip('+')} takes text: one quoted string, or under -m quoted strings separated "
                    "by commas (e.g. -m \"prompt='a, b','c'\")")


def literal_texts(value, free: bool) -> str | None:
    """A `free` key's string (quoted or not), else a list of strings, as literal Hydra text; else None."""
    if free:
        value = value.text if isinstance(value, QuotedString) else value
        return literal(unescape_interpolation(value)) if isinstance(value, str) else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ",".join(literal(unescape_interpolation(v)) for v in value) + "]"
    return None


def command_line_limits(overrides: list[str]) -> dict[str, int]:
    """The `limits:` block as the command line sets it over the defaults (for the files read before Hydra composes)."""
    given = {}
    for arg in overrides:
        key, _, value = arg.lstrip("+").partition("=")
        if key.startswith("limits."):
            given[key.removeprefix("limits.")] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return limits({"limits": given})


def check_seed_count(arg: str, limit: dict[str, int]) -> None:
    """Refuse `seeds=[...]` (each list of a sweep of them) longer than limits.max_seeds before Hydra's parser reads it:
    its time grows with the square of a list's length (a minute for 10,000 seeds)."""
    key, _, value = arg.partition("=")
    if key.lstrip("+") == "seeds" and (most := max((part.count(",") + 1 for part in re.findall(r"\[([^][]*)]", value)),
                                                   default=0)) > limit["max_seeds"]:
        raise UserError(f"{most} seeds are more than limits.max_seeds={limit['max_seeds']} in one job; raise it with "
                        "limits.max_seeds=N on a machine that can take it")


def expand_prompt_file(arg: str, multirun: bool, limit: dict[str, int]) -> str:
    """`prompt_file=F` -> `prompt=` the file's prompts, literal (a sweep of them under -m, else the one prompt)."""
    path = arg.partition("=")[2]
    parts = path.split(",")  # a list of files where one belongs: say so
    if len(parts) > 1 and not Path(path).expanduser().exists() and all(Path(p).expanduser().exists() for p in parts):
        raise UserError(f"{PROMPT_FILE_KEY}={path} does not exist; it takes one file: put the lines of "
                        f"{' and '.join(parts)} in one file to sweep them all")
    prompts = read_prompt_lines(path, f"{PROMPT_FILE_KEY}={path}", limit)
    if not prompts:
        raise UserError(f"{PROMPT_FILE_KEY}={path} holds no prompts; write one prompt per line")
    if twice := repeats(prompts):  # one cell: a sweep would run it as a job that makes nothing
        raise UserError(f"{PROMPT_FILE_KEY}={path} lists {twice[0]!r} twice; list each prompt once")
    if len(prompts) > 1 and not multirun:
        raise UserError(f"{PROMPT_FILE_KEY}={path} holds {len(prompts)} prompts; add -m to run one job per prompt")
    return "prompt=" + ",".join(literal(p) for p in prompts)


def check_syntax(arg: str) -> None:
    """Reject an override Hydra cannot parse, naming it."""
    try:
        override_parser().parse_override(arg)
    except Exception as e:  # noqa: BLE001 - Hydra's parse errors have no common base worth naming
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {arg!r}: {reason} (quote values with special characters, "
                        "e.g. 'seeds=[1,2]')") from None


def is_sweep(arg: str) -> bool:
    """Whether override `arg` sweeps its key (`seed=1,2`, `seed=range(3)`); False for one Hydra cannot read."""
    try:
        return override_parser().parse_override(arg).is_sweep_override()
    except Exception:  # noqa: BLE001 - its parse error is check_syntax's to say
        return False


def check_override(arg: str, typed: dict[str, list[str]]) -> None:
    """Reject an unknown group choice or key, or `+KEY=` of a set key; `typed`: the groups' typed options."""
    key, sep, value = arg.partition("=")
    if key.startswith("~"):
        name = key.lstrip("~")
        if name.partition(".")[0] in GROUPS or name in known_keys(None):
            raise UserError(f"{arg}: sdlab's config keys and groups cannot be deleted; set a value instead "
                            f"(e.g. {name.partition('.')[0]}=...)")
        if name in OUTPUT_KEYS or f"{name}.dir" in OUTPUT_KEYS:  # Hydra said "HydraConfig was not set"
            raise UserError(f"{arg}: where a run writes cannot be deleted; set it instead (e.g. "
                            f"{name if name in OUTPUT_KEYS else name + '.dir'}=DIR)")
        return
    if not sep:
        raise UserError(f"{arg!r} is not an override; write KEY=VALUE (see sdlab --help)")
    check_syntax(arg)
    key, adds = key.lstrip("+"), arg.startswith("+") and not arg.startswith("++")
    check_logging_key(key)
    if key == "hydra.job.chdir" and value.strip().lower() != "false":
        raise UserError(f"{arg}: sdlab reads the files you name (params=, prompt_file=, images=, reference=) from "
                        "where you start it and writes into the run dir itself; hydra.job.chdir takes false only")
    if key.startswith("hydra") or key.startswith("experiment."):
        return check_plugin_option(key, value, typed)
    if key in GROUPS:
        if value.startswith(SWEEP_FUNCTIONS):
            return
        for option in value.split(","):
            if option not in group_options(key):
                raise UserError(f"unknown {key} {option!r}{suggestion(option, group_options(key))}; "
                                f"choose one of: {', '.join(group_options(key))}")
        return
    group, _, sub = key.partition(".")
    recipes = typed.get("experiment") or ["generate"]
    if sub and group in ("model", "scheduler", "clip"):
        check_sub_key(key, [dict.fromkeys(known_keys(group))])
        if adds:
            options = sorted({option for recipe in recipes for option in group_choices(group, recipe, typed)})
            check_not_set(key, value, {option: {group: option_values(group, option)} for option in options}, group)
        return
    configs = {name: recipe_config(name) for name in recipes}
    lacking = [name for name, config in configs.items() if group not in config]
    readers = kin(configs) if arg.startswith("+") else list(configs.values())  # `+KEY` adds a key a recipe leaves out
    if (lacking and not arg.startswith("+")) or not any(group in config for config in readers):
        config, main = configs[lacking[0]], sorted(conf_values("config.yaml").keys() - {"hydra", "job"})
        where = f" for experiment={lacking[0]}" if len(configs) > 1 else ""
        read = next((c["job"] for c in kin(configs) if group in c), None) if not arg.startswith("+") else None
        hint = (f" (++{key}=VALUE sets it there too)" if len(lacking) < len(configs)
                else f" (+{key}={value} adds it: job {read} reads it)" if read
                else suggestion(key, config.keys() | {PROMPT_FILE_KEY}) or group_key_hint(key))
        extra = sorted(config.keys() - conf_values("config.yaml").keys())  # the recipe's own top-level keys
        own = f"; experiment={lacking[0]} adds: {', '.join(extra)}" if extra else ""
        raise UserError(f"unknown config key {key!r}{where}{hint}; the main keys are: "
                        f"{', '.join(main + [PROMPT_FILE_KEY])}{own} (sdlab --help; a recipe's own keys: sdlab "
                        "experiment=NAME --cfg job)")
    blocks = [config[group] for config in readers if isinstance(config.get(group), dict)]
    if sub and blocks:
        check_sub_key(key, blocks, arg.startswith("+"))
    if adds:
        check_not_set(key, value, configs)


def check_plugin_option(key: str, value: str, typed: dict[str, list[str]]) -> None:
    """Refuse `hydra.launcher.KEY=` or `hydra.sweeper.KEY=`, `+` or not, that the chosen launcher or sweeper has not:
    Hydra advised `+KEY=`, which a launcher then ignored or failed on with a traceback."""
    parts = key.split(".")
    group = f"hydra/{parts[1]}" if len(parts) > 2 and parts[1] in ("launcher", "sweeper") else ""
    choice = (typed.get(group) or [default_choices("config.yaml").get(group, "")])[-1] if group else ""
    options = plugin_options(group, choice) if choice else None
    if options is None or parts[2] in options:
        return
    names = [name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)]  # the installed plugins'
    others = [name for name in names if name != choice and parts[2] in (plugin_options(group, name) or ())]
    raise UserError(f"hydra.{parts[1]}.{parts[2]}={value}: {group}={choice} has no option {parts[2]}"
                    f"{near_miss(parts[2], options)}; its options are: {', '.join(options)}"
                    + (f"; {group}={others[0]} has {parts[2]}" if others else ""))


@functools.lru_cache(maxsize=None)
def plugin_options(group: str, choice: str) -> tuple[str, ...] | None:
    """The options of a launcher or sweeper (`group`: hydra/launcher or hydra/sweeper) as Hydra composes it; None for
    an option Hydra has not, which Hydra itself names."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            node = compose("config", [f"{group}={choice}"], return_hydra_config=True).hydra[group.partition("/")[2]]
    except HydraException:  # an unknown choice: Hydra's own message names it, with the choices
        return None
    return tuple(sorted(name for name in node if name != "_target_"))


def check_logging_key(key: str) -> None:
    """Refuse moving a log: a handler's file, class or stream could write anywhere; its level and format may change."""
    root, _, rest = key.partition(".")[2].partition(".")
    if key.startswith("hydra.") and root in ("job_logging", "hydra_logging"):
        parts = rest.split(".")
        if not rest or (parts[0] == "handlers" and not (len(parts) == 3 and parts[2] in ("level", "formatter"))):
            raise UserError(f"{key}: a run's log is <run dir>/<hydra.job.name>.log and the console, nowhere else; "
                            f"hydra.{root}'s levels and formats may be set (e.g. hydra.{root}.root.level=DEBUG)")


def check_not_set(key: str, value: str, configs: dict[str, dict], group: str = "experiment") -> None:
    """Refuse `+KEY=VALUE` (other than a list or dict, which Hydra merges) where a config of the run sets KEY."""
    setters = [name for name, config in configs.items() if value_at(config, key) is not None]
    parsed = override_parser().parse_override(f"{key}={value}").value()
    if not setters or all(isinstance(v, (list, dict)) for v in (parsed.list if isinstance(parsed, ChoiceSweep)
                                                                 else [parsed])):
        return
    if len(setters) == len(configs):
        raise UserError(f"+{key}={value} adds a key that is set already; write {key}={value} to change it")
    raise UserError(f"+{key}={value}: {group}={setters[0]} sets {key} already; write ++{key}={value} to set it "
                    "in every job")


def value_at(config: dict, key: str):
    """The value a config sets at a dotted key, or None."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def group_key_hint(key: str) -> str:
    """' (did you mean model.dtype?)' for a top-level key that the model, scheduler or clip group takes, else ''."""
    owners = [f"{group}.{key}" for group in ("model", "scheduler", "clip") if key in known_keys(group)]
    return f" (did you mean {' or '.join(owners)}?)" if owners else ""


def check_sub_key(key: str, blocks: list, adds: bool = False) -> None:
    """Reject `group.a.b=` whose path leaves the keys its blocks hold, naming that level's keys and the near miss;
    below the first level `adds` (`+KEY=`) may add a key, which the recipe's own check then judges."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        allowed = set().union(*(block for block in blocks if isinstance(block, dict)))
        if not allowed or (adds and depth > 1):
            return
        if parts[depth] not in allowed:
            raise UserError(f"unknown config key {key!r}{suggestion(parts[depth], allowed)}; "
                            f"{'.'.join(parts[:depth])}.* keys are: {', '.join(sorted(allowed))}"
                            + (f"; +{key}=VALUE adds one" if depth > 1 else ""))
        blocks = [block.get(parts[depth]) for block in blocks if isinstance(block, dict)]


def recipe_config(name: str) -> dict:
    """The top-level values of a recipe over the base config's (blocks both set hold the keys of both)."""
    base, recipe = conf_values("config.yaml"), conf_values(f"experiment/{name}.yaml")
    return {**base, **recipe, **{key: {**base[key], **recipe[key]} for key in base.keys() & recipe.keys()
                                 if isinstance(base[key], dict) and isinstance(recipe[key], dict)}}


def kin(configs: dict[str, dict]) -> list[dict]:
    """The config of every recipe that runs a job of these (a job reads keys that some of its recipes leave out)."""
    jobs = {config["job"] for config in configs.values()}
    return [config for config in map(recipe_config, group_options("experiment")) if config["job"] in jobs]


def typed_choices(group: str, overrides: list[str]) -> list[str]:
    """The options of `group` the last `group=` picks (a list, choice() or glob()), [] if none; unknown ones refused."""
    chosen = [arg for arg in overrides if arg.partition("=")[0].lstrip("+") == group]
    if not chosen:
        return []
    check_override(chosen[-1], {})
    override = override_parser().parse_override(chosen[-1])
    if isinstance(override.value(), Glob):
        return override.value().filter(group_options(group))
    names = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
    return [name for name in names if name in group_options(group)]


def group_choices(group: str, recipe: str, typed: dict[str, list[str]]) -> list[str]:
    """The options of `group` a job of `recipe` composes: typed, else the recipe's, the models', the base's."""
    if typed.get(group):
        return typed[group]
    picked = default_choices(f"experiment/{recipe}.yaml").get(group)
    models = [] if picked or group == "model" else group_choices("model", recipe, typed)
    picks = {default_choices(f"model/{model}.yaml").get(group) for model in models} or {picked}
    return sorted(pick or default_choices("config.yaml")[group] for pick in picks)


def check_exclusive(overrides: list[str]) -> None:
    """Refuse two keys (not null) of which only one would take effect, such as `seed` and `seeds`, or a sweep and
    another value of its key (`seed=1,2 seed=3`: a plain value given again replaces the first, as scripts expect),
    naming both."""
    first_of: dict[str, int] = {}
    for i, arg in enumerate(overrides):
        key, sep, _ = arg.partition("=")
        if (sep and not key.startswith("~") and (earlier := first_of.setdefault(key.lstrip("+"), i)) != i
                and (is_sweep(overrides[earlier]) or is_sweep(arg))):
            raise UserError(f"{overrides[earlier]} and {arg} cannot go together ({key.lstrip('+')} is given twice: "
                            "only the last would count); give it once")
    typed = {arg.partition("=")[0].lstrip("+"): arg for arg in overrides if arg.partition("=")[2] not in ("", "null")}
    if found := clash(typed):
        pair, why = found
        first, second = sorted(pair, key=lambda key: overrides.index(typed[key]))
        raise UserError(f"{typed[first]} and {typed[second]} cannot go together ({why}); give one of them")


def experiment_is_swept(overrides: list[str]) -> bool:
    """True when `experiment=` names several recipes (a list or a sweep function)."""
    values = [a.partition("=")[2] for a in overrides if a.partition("=")[0] == "experiment"]
    return any("," in v or v.startswith(SWEEP_FUNCTIONS) for v in values)


def default_sweep_dir(multirun: bool, overrides: list[str]) -> list[str]:
    """Over recipes, a sweep dir and `<N>_<recipe>` subdirs every job agrees on (the default names a recipe)."""
    if not multirun or not experiment_is_swept(overrides):
        return []
    given = {a.partition("=")[0] for a in overrides}
    return [arg for arg in (RECIPES_SWEEP_DIR, RECIPES_SUBDIR) if arg.partition("=")[0] not in given]


def named_by_sdlab(config, key: str) -> bool:
    """Whether the dir at `key` is sdlab's default, named by the second (another sdlab may take it too)."""
    given = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # as typed: `${...}` unresolved
    typed = [o for o in given if o.partition("=")[0].lstrip("+") == key]
    parent, _, leaf = key.rpartition(".")
    value = OmegaConf.to_container(OmegaConf.select(config, parent), resolve=False).get(leaf)
    return (not typed or typed[-1] == RECIPES_SWEEP_DIR) and "${now:" in str(value)


def sweep_root(overrides: list[str]) -> Path:
    """Where a sweep without `hydra.sweep.dir=` lands: outputs/<recipe>/, or outputs/experiments/ over recipes."""
    if experiment_is_swept(overrides):
        return RECIPES_ROOT
    chosen = [a.partition("=")[2] for a in overrides if a.partition("=")[0].lstrip("+") == "experiment"]
    return Path("outputs") / (chosen[-1] if chosen else "generate")


def resumed_sweep_dir(multirun: bool, overrides: list[str]) -> list[str]:
    """`hydra.sweep.dir=` where this same sweep ran before (by its manifest), unless one is given; said in a line."""
    if not multirun or any(a.partition("=")[0] == "hydra.sweep.dir" for a in overrides):
        return []
    root = sweep_root(overrides)  # this same sweep's folder, else one a sweep killed as it started left unused
    earlier = earlier_sweep(root, overrides) or next(((folder, False) for folder in abandoned_sweeps(root)), None)
    if earlier is None:
        return []
    folder, complete = earlier
    state = "finished before in" if complete else "continues in"  # its cells' weights may have changed since
    print(f"sdlab: this sweep {state} {folder} (hydra.sweep.dir=DIR runs it elsewhere)", flush=True)
    return [f"hydra.sweep.dir={folder}"]


def model_of_params_file(overrides: list[str], limit: dict[str, int]) -> list[str]:
    """`model=NAME` for a `params=FILE` naming its model, unless typed (Hydra picks groups before merging it)."""
    keys = {a.partition("=")[0].lstrip("+") for a in overrides}
    paths = [a.partition("=")[2] for a in overrides if a.partition("=")[0] == "params"]
    if "model" in keys or len(paths) != 1 or "," in paths[0]:
        return []
    model = load_params(paths[0], limit).get("model")
    return [f"model={model}"] if model else []


class FlagParser(argparse.ArgumentParser):
    """Hydra's flags as Hydra's argparse reads them; a flag it would refuse is one line, not its usage page too."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see sdlab --help")


@functools.cache
def flag_parser() -> FlagParser:
    """A parser of the flags Hydra's command line takes, each read only as written in full."""
    parser = FlagParser(prog="sdlab", add_help=False, allow_abbrev=False)
    for names in SWITCHES:
        parser.add_argument(*names, action="store_true")
    for names, options in VALUED.items():
        parser.add_argument(*names, **options)
    return parser


def check_flags(flags: list[str]) -> argparse.Namespace:
    """The flags as Hydra will read them; one it would refuse, alone or with another, or abbreviated, is a UserError."""
    for flag in flags:
        name = flag.partition("=")[0]
        full = [f for f in LONG_FLAGS if f.startswith(name)] if name.startswith("--") and len(name) > 2 else []
        if full and name not in full:
            raise UserError(f"{name} is short for {' or '.join(full)}; sdlab reads a flag only as written in full")
    parsed = flag_parser().parse_args(flags)
    modes = [flag for dest, flag in MODES.items() if getattr(parsed, dest)]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot go together: Hydra runs one of {', '.join(MODES.values())} at "
                        "a time (print a sweep job's config with its values and --cfg job, without -m)")
    if parsed.experimental_rerun is not None:
        raise UserError("--experimental-rerun is not supported: it unpickles the file it is given; rerun the same "
                        "command instead (sdlab resumes what is finished)")
    if parsed.resolve and not (parsed.cfg or parsed.help):
        raise UserError("--resolve goes only with --cfg or --help: it resolves the config they print")
    if Path(parsed.config_path or "").suffix in (".yaml", ".yml"):
        raise UserError(f"--config-path {parsed.config_path} names a file; --config-path takes a folder, "
                        "--config-name the config in it")
    return parsed


def check_completion(words: list[str]) -> None:
    """`-sc`'s one subcommand, as Hydra's completion plugins take it (Hydra raised a ValueError on another)."""
    rule = "one of install=SHELL, uninstall=SHELL, query=SHELL (SHELL: bash, fish, zsh)"
    if len(words) != 1:
        raise UserError(f"--shell-completion takes {rule}, e.g. eval \"$(sdlab -sc install=bash)\"")
    action, _, shell = words[0].partition("=")
    if action not in ("install", "uninstall", "query") or shell not in ("bash", "fish", "zsh"):
        raise UserError(f"--shell-completion {words[0]}: it takes {rule}")


def prepare(argv: list[str]) -> list[str]:
    """The command line Hydra gets: checked, free text quoted, prompt files expanded, a sweep dir if needed."""
    flags, overrides = split_flags(argv)
    parsed = check_flags(flags)
    if parsed.shell_completion:  # its install= and query= are no overrides
        check_completion(overrides)
        return argv
    multirun = parsed.multirun
    check_exclusive(overrides)
    limit = command_line_limits(overrides)
    ready, typed = [], {group: typed_choices(group, overrides) for group in GROUPS}
    typed |= {group: [arg.partition("=")[2] for arg in overrides if arg.partition("=")[0] == group][-1:]
              for group in ("hydra/launcher", "hydra/sweeper")}
    for arg in overrides:
        check_seed_count(arg, limit)
        is_file = arg.partition("=")[0] == PROMPT_FILE_KEY  # its prompts come out literal already
        arg = expand_prompt_file(arg, multirun, limit) if is_file else quote_text(arg)
        check_override(arg, typed)
        ready.append(arg)
    ready += model_of_params_file(ready, limit)
    for arg in ready[len(overrides):]:
        check_override(arg, typed)
    ready += resumed_sweep_dir(multirun, ready)
    return flags + ready + default_sweep_dir(multirun, ready)


def typed_values(args: list[str]) -> dict[str, str]:
    """The last value typed for each `KEY=` override (`+`/`++` prefixes dropped, outer quotes removed)."""
    values = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-"):
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.lstrip("+")] = value
    return values


def check_output_dir(args: list[str]) -> None:
    """Refuse an output dir sdlab may not write, or a path leading out of it, before Hydra writes anything."""
    dir_key = "hydra.sweep.dir" if flag_parser().parse_args(split_flags(args)[0]).multirun else "hydra.run.dir"
    typed = typed_values(args)
    literal = {k: v for k, v in typed.items() if "${" not in v}
    if "hydra.job.name" in literal:
        check_job_name(literal["hydra.job.name"])
    folder = None  # a typed `${...}` dir: known once Hydra resolves it
    if dir_key in literal:
        folder = checked_root(literal[dir_key], dir_key)
        if dir_key == "hydra.run.dir":
            check_run_dir(folder, dir_key, literal.get("hydra.job.name"),
                          literal.get("hydra.output_subdir", ".hydra"), shown=literal[dir_key])
        else:
            check_owned(folder, dir_key, shown=literal[dir_key])
    elif dir_key not in typed:  # the default sweep dir, named when Hydra starts: as it will be named
        folder = (sweep_root(args) / time.strftime("multirun_%Y-%m-%d_%H-%M-%S")).absolute()
    if dir_key == "hydra.sweep.dir" and folder and "hydra.sweep.subdir" in literal:
        confined(folder, literal["hydra.sweep.subdir"], "hydra.sweep.subdir")
    target = literal.get(dir_key, "outputs")
    path = Path(target).expanduser().absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UserError(f"output dir {target} cannot be written ({existing} is not a writable folder)") from None


def display_overrides(task: list[str]) -> dict[str, str]:
    """A job's overrides as {key: value as the user wrote it}: strings unquoted and unescaped, others as typed."""
    return dict(shown_override(item) for item in task)


@functools.lru_cache(maxsize=4096)
def shown_override(item: str) -> tuple[str, str | None]:
    """One override as (key, value as the user wrote it); cached: a sweep's cells repeat the same few items."""
    try:
        override = override_parser().parse_override(item)
    except Exception:  # noqa: BLE001 - Hydra already accepted it; show it raw rather than fail the job
        key, _, value = item.partition("=")
        return key.lstrip("+~"), value
    key = override.key_or_group.lstrip("+~")
    if override.package:
        key = f"{key}@{override.package}"
    if override.is_delete():  # `~key` (or `~key=value`): the key is gone, shown as typed
        return key, item.partition("=")[2] or None
    value = override.value()
    if isinstance(value, str) and key in FREE_TEXT_KEYS:
        value = unescape_interpolation(value)  # as `quote_text` escaped it: the text the model gets
    elif isinstance(value, list) and key in PROMPT_LIST_KEYS and all(isinstance(v, str) for v in value):
        value = "[" + ",".join(unescape_interpolation(v) for v in value) + "]"
    return key, value if isinstance(value, str) else override.get_value_string()


@functools.cache
def override_parser() -> OverridesParser:
    """Hydra's override parser, made once."""
    return OverridesParser.create()
