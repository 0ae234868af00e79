"""One way from a job's settings to its command line: dataclass fields, YAML and ``--set``.

A job's settings are a dataclass, flat (``SegmentConfig``) or with sections that are
dataclasses themselves (``TrainConfig``: model, data, optim, run). Each field's metadata,
made by :func:`option`, holds its help text, choices and argument group.
:func:`add_arguments` gives a parser, for every field:

- ``--section.field-name VALUE`` (``--field-name`` in a flat config); a boolean takes an
  optional value (``--data.hflip``, ``--data.hflip false``);
- ``--config FILE``: a YAML file of the same shape (a training recipe);
- ``--set KEY=VALUE``: any field by its dotted key, also inside a mapping
  (``--set model.overrides.img_size=512``).

:func:`resolve` merges them: the fields' defaults < the YAML < flags and ``--set`` in
command-line order. A flag is the same assignment as ``--set``: its text is parsed for
the field's type (a string as given, an int, a float such as ``1e-4``, ``true``/``false``;
YAML for mappings, lists and untyped values; ``null`` for None where None is allowed).
Every problem is a :class:`ConfigError` naming the key, and the file when there is one.

Torch-free: a job's ``--help`` imports this, its config and nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

MISSING = dataclasses.MISSING
NONE_TEXT = ("", "null", "none", "None", "~")
METAVARS = {str: "TEXT", int: "INT", float: "FLOAT"}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, group: Optional[str] = None,
           choices: Optional[Sequence[Any]] = None, metavar: Optional[str] = None) -> Any:
    """A config field with what its command-line flag needs: help, argument group (flat
    configs; a nested config groups by section), choices (shown in ``--help``; the config's
    own check rejects others) and metavar."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices is not None else None,
            "metavar": metavar}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------- types
def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(tp) -> Tuple[Any, bool]:
    """(the type inside Optional, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, tp is Any


def is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(cls) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_type(cls, key: str) -> Any:
    """The type of the field at dotted ``key``; ``Any`` for a key inside a mapping field
    (``model.overrides.img_size``). Unknown keys raise ConfigError listing the known ones."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            where = ".".join(parts[:i])
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key}: {'the config' if not where else where} has no key {part!r}; known: {known}")
        tp = _hints(cls)[part]
        if i == len(parts) - 1:
            return tp
        base, _ = _unwrap(tp)
        if is_section(base):
            cls = base
            continue
        if typing.get_origin(base) in (dict, Dict) or base is Any:
            return Any
        raise ConfigError(f"{key}: {'.'.join(parts[:i + 1])} is a value, not a section")
    return Any  # pragma: no cover - the loop returns


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """A value read from YAML (or given in Python) as the field's type: ints where floats
    are expected become floats, numbers written as strings (YAML 1.1 reads ``1e-4`` as a
    string) become numbers; anything else of the wrong type is a ConfigError."""
    base, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed, give a {_type_name(base)}")
    if base is Any or is_section(base):
        return value
    origin = typing.get_origin(base)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = (typing.get_args(base) or (Any,))[0]
        return [coerce(v, item, key) for v in value] if origin in (list, List) else list(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not true or false")
    if base in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a{'n' if base is int else ''} {base.__name__}")
        if isinstance(value, str):
            try:
                return base(value)
            except ValueError:
                raise ConfigError(f"{key}: {value!r} is not a{'n' if base is int else ''} {base.__name__}") from None
        if base is float and isinstance(value, int):
            return float(value)
        if isinstance(value, base):
            return value
        raise ConfigError(f"{key}: {value!r} is not a{'n' if base is int else ''} {base.__name__}")
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_text(text: str, tp: Any, key: str) -> Any:
    """A value given as text on the command line, as the field's type; a list field takes
    ``a,b,c`` or a YAML list."""
    base, optional = _unwrap(tp)
    if optional and text.strip() in NONE_TEXT:
        return None
    if base is str:
        return text
    if base in (int, float):
        return coerce(text.strip(), tp, key)
    if typing.get_origin(base) in (list, List) and not text.strip().startswith("["):
        item = (typing.get_args(base) or (Any,))[0]  # "a,b,c" (or the arguments of a flag, joined)
        return [parse_text(t, item, key) for t in text.split(",") if t.strip()]
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: {text!r} is not valid YAML ({exc.problem})") from None
    return coerce(value, tp, key)


# ------------------------------------------------------------------- dicts
def defaults(cls) -> Dict[str, Any]:
    """The fields' defaults as a nested dict (required fields left out); builds nothing,
    checks nothing."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if is_section(tp):
            out[f.name] = defaults(tp)
        elif f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``, sections merged key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def assign(d: Dict[str, Any], key: str, value: Any) -> None:
    """``d[a][b][c] = value`` for key ``a.b.c``, creating mappings on the way."""
    *path, last = key.split(".")
    for part in path:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[last] = value


def from_dict(cls, data: Optional[Dict[str, Any]], where: str = "") -> Any:
    """The config from a nested dict: sections built recursively, values coerced, keys the
    config no longer has (``RETIRED_KEYS``, a class attribute) dropped, unknown keys and
    the config's own checks a ConfigError naming the key."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping")
    fields, hints = _fields(cls), _hints(cls)
    for key in getattr(cls, "RETIRED_KEYS", ()):
        data.pop(key, None)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in {where or 'the config'}; known: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        tp, key = hints[name], f"{where}.{name}" if where else name
        if is_section(tp):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config section {key!r} must be a mapping, got {type(value).__name__}")
            values[name] = from_dict(tp, value, key)
        else:
            values[name] = coerce(value, tp, key)
    missing = [n for n, f in fields.items() if n not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"missing: give {', '.join(flag_name(f'{where}.{m}' if where else m) for m in missing)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(path: str, what: str = "--config", listing_dir: Optional[str] = None) -> Dict[str, Any]:
    """A YAML mapping from ``path``; a missing file is a ConfigError that lists the YAML
    files of ``listing_dir`` (the recipes in configs/)."""
    if not os.path.isfile(path):
        known = sorted(f for f in os.listdir(listing_dir) if f.endswith(".yaml")) \
            if listing_dir and os.path.isdir(listing_dir) else []
        raise ConfigError(f"{what} {path}: no such file"
                          + (f"; the recipes in {os.path.basename(listing_dir)}/: {', '.join(known)}" if known else ""))
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


# ------------------------------------------------------------ command line
class _Assign(argparse.Action):
    """Records ``(key, text)`` in command-line order; ``--set`` and every field's flag."""

    def __init__(self, option_strings, dest, key=None, target="config", fixed=None, **kwargs):
        self.key, self.target, self.fixed = key, target, fixed
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        store = f"{self.target}_assignments"
        items = list(getattr(namespace, store, None) or [])
        if self.key is None:  # --set KEY=VALUE
            key, sep, text = values.partition("=")
            if not sep or not key.strip():
                parser.error(f"{option_string} {values!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
            items.append((key.strip(), text, f"{option_string} {values}"))
        else:
            if isinstance(values, list):  # a list field's values: one per argument
                values = ",".join(values)
            text = self.fixed if self.fixed is not None else "true" if values is None else values
            items.append((self.key, text, option_string))
        setattr(namespace, store, items)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list, tuple)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, cls, *, target: str = "config",
                  config_flag: Optional[str] = "--config", config_help: str = "a YAML file of these settings",
                  set_flag: Optional[str] = "--set", aliases: Optional[Dict[str, str]] = None,
                  skip: Sequence[str] = (), default_file: Optional[str] = None) -> None:
    """Add ``config_flag``, ``set_flag`` and one flag per field of ``cls`` to ``parser``.

    ``aliases`` maps extra flags to dotted keys (``{"--dataset": "data.dataset"}``);
    ``skip`` names fields (dotted) without a flag; ``default_file`` is the YAML a job reads
    when no ``config_flag`` is given (its values are the defaults ``--help`` shows).
    What the user gave lands in ``args.<target>_file`` and ``args.<target>_assignments``."""
    aliases = aliases or {}
    by_key: Dict[str, List[str]] = {}
    for flag, key in aliases.items():
        by_key.setdefault(key, []).append(flag)
    shown = merge(defaults(cls), load_yaml(default_file)) if default_file else defaults(cls)
    if parser.usage is None:
        nested = any(is_section(t) for t in _hints(cls).values())
        parser.usage = "%(prog)s [-h] " + (f"[{config_flag} FILE] " if config_flag else "") \
            + (f"[{set_flag} KEY=VALUE ...] " if set_flag else "") \
            + ("[--SECTION.FIELD VALUE ...]" if nested else "[--FIELD VALUE ...]") + " [flags below]"
    parser.set_defaults(**{f"{target}_assignments": None})
    if config_flag or set_flag:
        g = parser.add_argument_group("configuration")
        if config_flag:
            g.add_argument(config_flag, dest=f"{target}_file", default=None, metavar="FILE", help=config_help)
        if set_flag:
            g.add_argument(set_flag, action=_Assign, target=target, dest=f"{target}_set", metavar="KEY=VALUE",
                           default=argparse.SUPPRESS,
                           help="set any field by its dotted key (repeatable; later wins), e.g. "
                                + ("optim.lr=1e-4" if any(is_section(t) for t in _hints(cls).values())
                                   else f"{dataclasses.fields(cls)[0].name}=..."))
    _add_fields(parser, cls, "", target, by_key, set(skip), shown, {})


def _add_fields(parser, cls, prefix, target, by_key, skip, shown, groups) -> None:
    hints = _hints(cls)
    section_group = None
    if prefix:
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        section_group = parser.add_argument_group(prefix.rstrip("."), doc or None)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in skip:
            continue
        tp = hints[f.name]
        if is_section(tp):
            _add_fields(parser, tp, key + ".", target, by_key, skip, (shown or {}).get(f.name) or {}, groups)
            continue
        meta = f.metadata
        group = section_group
        if group is None and meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            group = groups[meta["group"]]
        base, _ = _unwrap(tp)
        help_text = meta.get("help") or ""
        default = shown.get(f.name) if isinstance(shown, dict) else None
        if default is not None and default != {} and default != () and "(default" not in help_text:
            help_text += f" (default {_show(default)})".replace("%", "%%")
        required = f.default is MISSING and f.default_factory is MISSING and default is None
        if required:
            help_text += " (required)"
        choices = meta.get("choices")
        metavar = meta.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
        kwargs = dict(action=_Assign, key=key, target=target, dest=f"{target}__{key}", default=argparse.SUPPRESS,
                      help=help_text)
        if base is bool:
            kwargs.update(nargs="?", metavar="BOOL")
            if not prefix:  # a flat config's switches also have their --no- form
                (group or parser).add_argument("--no-" + flag_name(key)[2:], action=_Assign, key=key, target=target,
                                               fixed="false", nargs=0, dest=f"{target}__no_{key}",
                                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                kwargs["help"] = kwargs["help"].replace(" (default", f" (--no-{flag_name(key)[2:]}: false; default", 1) \
                    if " (default" in kwargs["help"] else kwargs["help"] + f" (--no-{flag_name(key)[2:]}: false)"
        elif typing.get_origin(base) in (list, List):
            item = (typing.get_args(base) or (str,))[0]
            kwargs.update(nargs="+", metavar=metavar or METAVARS.get(item, "VALUE"))
            if choices:
                kwargs.update(choices=list(choices), metavar=None)
        else:
            kwargs.update(metavar=metavar or METAVARS.get(base, "VALUE"))
            if choices and all(isinstance(c, str) for c in choices):
                kwargs["choices"] = list(choices)  # argparse names the choices on a typo
        (group or parser).add_argument(flag_name(key), *[a for a in by_key.get(key, ()) if a != flag_name(key)],
                                       **kwargs)


def given(args: argparse.Namespace, target: str = "config") -> List[Tuple[str, str, str]]:
    """What the command line assigned: ``(dotted key, text, as given)`` in order."""
    return list(getattr(args, f"{target}_assignments", None) or [])


def assigned(cls, args: argparse.Namespace, target: str = "config") -> List[Tuple[str, Any]]:
    """The command line's assignments as ``(dotted key, value)`` in order, each value
    parsed for its field's type; an error names the flag as given."""
    out = []
    for key, text, shown in given(args, target):
        try:
            out.append((key, parse_text(text, field_type(cls, key), key)))
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(f"{shown}: {message[len(key) + 2:] if message.startswith(key + ': ') else message}") from None
    return out


def resolve(cls, args: argparse.Namespace, *, target: str = "config", default_file: Optional[str] = None,
            listing_dir: Optional[str] = None) -> Dict[str, Any]:
    """The settings as a nested dict: the YAML (``--config``, or ``default_file``) with the
    command line's assignments applied in order. Build the config with :func:`from_dict`
    (after filling in what the job decides itself)."""
    path = getattr(args, f"{target}_file", None) or default_file
    d: Dict[str, Any] = {}
    if path:
        d = load_yaml(path, "--config" if getattr(args, f"{target}_file", None) else "default config", listing_dir)
    for key, value in assigned(cls, args, target):
        assign(d, key, value)
    return d


def build(cls, args: argparse.Namespace, **kwargs) -> Any:
    """:func:`resolve` then :func:`from_dict`; an error names the YAML file it came from."""
    d = resolve(cls, args, **kwargs)
    try:
        return from_dict(cls, d)
    except ConfigError as exc:
        path = getattr(args, f"{kwargs.get('target', 'config')}_file", None) or kwargs.get("default_file")
        raise ConfigError(f"{path}: {exc}" if path and not given(args, kwargs.get("target", "config")) else str(exc)) from None
