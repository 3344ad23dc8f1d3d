"""The DeepSpeed JSON checked against DeepSpeed's own config schema, before `deepspeed.initialize`.

DeepSpeed 0.19.8 ignores a top-level key it does not read (a misspelled `gradient_clipping` or
`zero_optimization` silently switches clipping or ZeRO off), and its pydantic sections refuse a misspelled
nested key with a long traceback. The schema is not copied here: DeepSpeed's own parser
(`DeepSpeedConfig._initialize_params`) runs on the JSON wrapped in dicts that record which keys it reads.
A top-level key it never asked for is unknown; a nested key is unknown when a pydantic section refuses it
(`extra="forbid"`) or when a plain-dict section that DeepSpeed reads key by key never asked for it.
Either way the error names the key, its place and the nearest known key (difflib).
"""

from __future__ import annotations

import collections.abc
import difflib

from .config import ConfigError

OURS = {"r1_compression", "apex"}  # read and removed by r1-ds before DeepSpeed sees the JSON
READ_ELSEWHERE = {"vocabulary_size", "sequence_parallel_size", "data_parallel_size"}  # read outside _initialize_params
KEY_BY_KEY = {"optimizer", "scheduler"}  # plain-dict sections whose every key DeepSpeed reads by name


class _Recorder(dict):
    """A dict that remembers the keys looked up in it; iterating over it (a pass-through section) marks
    it as fully read."""

    def __init__(self, data: dict):
        super().__init__({k: _Recorder(v) if isinstance(v, dict) else v for k, v in data.items()})
        self.seen: set = set()
        self.iterated = False

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self):
        outer = self

        class Keys(collections.abc.KeysView):
            def __contains__(self, key):
                outer.seen.add(key)
                return dict.__contains__(outer, key)

            def __iter__(self):
                outer.iterated = True
                return dict.__iter__(outer)

        return Keys(self)

    def items(self):
        self.iterated = True
        return super().items()

    def __iter__(self):
        self.iterated = True
        return super().__iter__()


def _nearest(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _model_class(title: str):
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo = [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _submodel(cls, field: str):
    """The pydantic model class of `cls.field` (also inside Optional[...]), or None."""
    import typing

    import pydantic

    f = cls.model_fields.get(field) or next((f for f in cls.model_fields.values() if f.alias == field), None)
    todo = [f.annotation] if f is not None else []
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
            return t
        todo.extend(typing.get_args(t))
    return None


def _pydantic_fields(title: str, loc: tuple) -> tuple[str, set[str]]:
    """(model name, its field names and aliases) of the model that holds the last key of `loc`, starting at
    the DeepSpeed config model called `title`."""
    cls = _model_class(title)
    for part in loc[:-1]:
        sub = _submodel(cls, str(part)) if cls is not None else None
        if sub is None:
            break
        cls = sub
    if cls is None:
        return title, set()
    names = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
    return cls.__name__, names


def check_deepspeed_keys(ds: dict, where: str) -> None:
    """Refuse keys of the DeepSpeed JSON `ds` (from file `where`) that DeepSpeed 0.19.8 does not know."""
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig

    rec = _Recorder({k: v for k, v in ds.items() if k not in OURS})
    parser = DeepSpeedConfig.__new__(DeepSpeedConfig)
    try:
        parser._initialize_params(rec)
    except pydantic.ValidationError as err:
        for e in err.errors():
            if e["type"] == "extra_forbidden":
                key = e["loc"][-1]
                section = [
                    k
                    for k, v in rec.items()
                    if isinstance(v, _Recorder) and v.iterated and v.seen == set(v) and _contains_path(v, e["loc"])
                ]
                place = ".".join([*(section[:1]), *map(str, e["loc"])])
                model, fields = _pydantic_fields(err.title, e["loc"])
                raise ConfigError(
                    f"DeepSpeed JSON {where}: unknown key {place!r} ({model} has no field "
                    f"{key!r}).{_nearest(key, fields)} Fix: correct the spelling "
                    "or remove it (DeepSpeed's config reference lists the keys)."
                ) from None
        return  # another kind of invalid value: DeepSpeed reports it itself
    except Exception:  # noqa: BLE001 - an invalid value: DeepSpeed reports it at initialize, with its own words
        return
    known = rec.seen | READ_ELSEWHERE | OURS
    for key in rec:
        if key not in known:
            raise ConfigError(
                f"DeepSpeed JSON {where}: unknown top-level key {key!r}; DeepSpeed would ignore it."
                f"{_nearest(key, rec.seen)} Fix: correct the spelling or remove it."
            )
    for name in KEY_BY_KEY:
        section = rec.get(name)
        if isinstance(section, _Recorder) and not section.iterated:
            for key in section:
                if key not in section.seen:
                    raise ConfigError(
                        f"DeepSpeed JSON {where}: unknown key '{name}.{key}'; DeepSpeed would ignore "
                        f"it.{_nearest(key, section.seen)} Fix: correct the spelling or remove it."
                    )


def _contains_path(section: dict, loc: tuple) -> bool:
    node = section
    for part in loc:
        if not isinstance(node, dict) or part not in dict.keys(node):
            return False
        node = dict.__getitem__(node, part)
    return True


def check_learning_rate(ds: dict, where: str) -> None:
    """The optimizer's lr must be a number > 0 (a negative lr trains uphill without any error)."""
    lr = ds.get("optimizer", {}).get("params", {}).get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(
            f"DeepSpeed JSON {where}: optimizer.params.lr={lr!r} must be a number > 0. Fix: use e.g. "
            "3e-4 (or set schedule.lr / --lr)."
        )
