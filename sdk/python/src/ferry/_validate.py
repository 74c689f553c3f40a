"""Payload validation from a task function's type hints, so a wrong-typed job fails once with
`retry: false` naming the field instead of crashing on every retry.

With pydantic installed (and `FERRY_NO_PYDANTIC` unset), each task gets one `TypeAdapter`
over a TypedDict built from its signature; pydantic's usual (lax) coercions apply. Without it
a built-in checker covers what JSON payloads need: scalars (a bool is not an int; a float
accepts an int), `None`, `list`/`tuple`/`set`/`dict` with element types, `Optional`/`Union`,
`Literal`, `TypedDict` (`total`, `Required`/`NotRequired`), dataclasses, enums and `Any`.
Both return the keyword arguments to call the function with (dataclasses built, tuples made),
and both name the failing field as a path such as `items[2].name`.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import os
import types
import typing
from collections import abc
from collections.abc import Callable
from typing import Any, Union

__all__ = ["PayloadInvalid", "Validator", "make_validator", "pydantic_enabled"]

NoneType = type(None)

Validator = Callable[[Any], dict[str, Any]]
"""Checks a payload and returns the keyword arguments for the task function."""


class PayloadInvalid(ValueError):
    """A payload that does not fit the task's signature: never worth retrying; `field` names
    the first offending field (`items[2].name`), or is None for the payload as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (PayloadInvalid, (self.reason, self.field))


def pydantic_enabled() -> bool:
    """Whether validators use pydantic: installed, and not switched off by `FERRY_NO_PYDANTIC=1`."""
    if os.environ.get("FERRY_NO_PYDANTIC", "") not in ("", "0"):
        return False
    try:
        import pydantic  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the task's signature -----------------------------------------------------------------


class _Params:
    """What a task function accepts as keyword arguments."""

    __slots__ = ("allowed", "extra", "fields", "name", "required")

    def __init__(self, fn: Callable[..., Any]) -> None:
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:
            # Unresolvable annotations (a forward reference in a local scope, say): the raw
            # annotation objects that are already types still check; strings do not.
            hints = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if not isinstance(v, str)}
        self.name = getattr(fn, "__qualname__", getattr(fn, "__name__", "task"))
        self.fields: dict[str, tuple[Any, bool]] = {}
        self.extra: Any = None
        for p in sig.parameters.values():
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.VAR_KEYWORD:
                self.extra = hints.get(p.name, Any)
                continue
            if p.kind is p.POSITIONAL_ONLY:
                if p.default is p.empty:
                    raise TypeError(
                        f"task {self.name}: positional-only parameter {p.name!r} cannot come from a payload"
                    )
                continue
            self.fields[p.name] = (hints.get(p.name, Any), p.default is p.empty)
        self.required = frozenset(k for k, (_, req) in self.fields.items() if req)
        self.allowed = frozenset(self.fields)

    def check_shape(self, payload: Any) -> dict[str, Any]:
        """The payload as a dict of known keys, or PayloadInvalid naming the first misfit."""
        if payload is None:
            payload = {}
        elif not isinstance(payload, dict):
            raise PayloadInvalid(f"the payload must be a JSON object of arguments, not {_kind(payload)}")
        if self.extra is None and not payload.keys() <= self.allowed:
            unknown = sorted(k for k in payload if k not in self.allowed)[0]
            raise PayloadInvalid("unexpected field", str(unknown))
        if not self.required <= payload.keys():
            missing = sorted(self.required - payload.keys())[0]
            raise PayloadInvalid("field required", missing)
        checked: dict[str, Any] = payload
        return checked


def make_validator(fn: Callable[..., Any], *, use_pydantic: bool | None = None) -> Validator:
    """The payload validator of `fn` (pydantic's or the built-in one)."""
    params = _Params(fn)
    if use_pydantic is None:
        use_pydantic = pydantic_enabled()
    if use_pydantic:
        try:
            return _pydantic_validator(params)
        except Exception as e:
            # pydantic refuses some hints the built-in checker takes (`typing.TypedDict` before
            # Python 3.12, say): check those payloads the built-in way rather than not at all.
            logging.getLogger("ferry.worker").warning(
                "task %s: pydantic cannot validate its hints (%s); using ferry's built-in checker",
                params.name,
                str(e).splitlines()[0],
            )
    return _builtin_validator(params)


# ---- pydantic -----------------------------------------------------------------------------


def _pydantic_validator(params: _Params) -> Validator:
    from pydantic import TypeAdapter, ValidationError
    from typing_extensions import NotRequired, Required, TypedDict

    if not params.fields:
        check = params.check_shape
        return check

    spec: dict[str, Any] = {}
    for name, (hint, required) in params.fields.items():
        spec[name] = Required[hint] if required else NotRequired[hint]
    make_typeddict: Any = TypedDict
    td = make_typeddict(f"{params.name.replace('.', '_').replace('<', '').replace('>', '')}_payload", spec)
    validate: Callable[[Any], Any] = TypeAdapter(td).validate_python
    check_shape = params.check_shape
    extra = params.extra
    extra_check = _compile(extra) if extra is not None and extra is not Any else None

    def validator(payload: Any) -> dict[str, Any]:
        payload = check_shape(payload)
        try:
            out: dict[str, Any] = validate(payload)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise PayloadInvalid(err["msg"], _path(err["loc"]) or None) from None
        if extra is not None:
            # Keyword arguments beyond the named ones pass through (checked by `**kwargs`' type).
            for k, v in payload.items():
                if k not in out:
                    out[k] = _run(extra_check, v, k) if extra_check is not None else v
        return out

    return validator


def _path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---- built-in -----------------------------------------------------------------------------


class _Fail(Exception):
    """A mismatch deep inside a value; containers add their key to `path` on the way out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[int | str] = []


Conv = Callable[[Any], Any]


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _type_name(tp: Any) -> str:
    if tp is NoneType:
        return "None"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _run(conv: Conv, v: Any, key: int | str) -> Any:
    try:
        return conv(v)
    except _Fail as f:
        f.path.append(key)
        raise PayloadInvalid(f.message, _path(list(reversed(f.path)))) from None


def _builtin_validator(params: _Params) -> Validator:
    convs = {name: _compile(hint) for name, (hint, _) in params.fields.items()}
    # Fields whose converter can only return its input need no copy of the payload.
    identity = {name for name, c in convs.items() if c is _any}
    check_shape = params.check_shape
    extra = params.extra
    extra_conv = _compile(extra) if extra is not None else None

    def validator(payload: Any) -> dict[str, Any]:
        payload = check_shape(payload)
        out: dict[str, Any] = {}
        for k, v in payload.items():
            conv = convs.get(k, extra_conv)
            if conv is None or k in identity:
                out[k] = v
                continue
            try:
                out[k] = conv(v)
            except _Fail as f:
                f.path.append(k)
                raise PayloadInvalid(f.message, _path(list(reversed(f.path)))) from None
        return out

    return validator


def _any(v: Any) -> Any:
    return v


def _compile(tp: Any) -> Conv:
    """A converter for annotation `tp`: returns the value (converted where JSON cannot say it:
    tuples, sets, dataclasses, enums) or raises `_Fail`."""
    return _compile_cached(tp, {})


def _compile_cached(tp: Any, seen: dict[int, Conv]) -> Conv:
    key = id(tp)
    hit = seen.get(key)
    if hit is not None:
        return hit
    # Recursive types (a dataclass naming itself) resolve through this late-bound slot.
    slot: list[Conv] = []

    def late(v: Any) -> Any:
        return slot[0](v)

    seen[key] = late
    conv = _build(tp, seen)
    slot.append(conv)
    seen[key] = conv
    return conv


def _build(tp: Any, seen: dict[int, Conv]) -> Conv:
    if tp is Any or tp is object or tp is inspect.Parameter.empty:
        return _any
    if tp is None or tp is NoneType:
        return _none
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _compile_cached(args[0], seen)
    if _is_required_wrapper(origin):
        return _compile_cached(args[0], seen)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return _union([_compile_cached(a, seen) for a in args], " | ".join(_type_name(a) for a in args))
    if origin is typing.Literal:
        return _literal(args)
    if isinstance(tp, typing.NewType):
        return _compile_cached(tp.__supertype__, seen)
    if isinstance(tp, typing.TypeVar):
        if tp.__bound__ is not None:
            return _compile_cached(tp.__bound__, seen)
        return _any
    if tp is bool:
        return _bool
    if tp is int:
        return _int
    if tp is float:
        return _float
    if tp is str:
        return _str
    container = origin or tp
    if container in (list, abc.Sequence, abc.MutableSequence):
        return _list(_compile_cached(args[0], seen) if args else _any)
    if container is tuple:
        if not args:
            return _tuple_var(_any)
        if args == ((),):
            return _tuple_fixed([])
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_var(_compile_cached(args[0], seen))
        return _tuple_fixed([_compile_cached(a, seen) for a in args])
    if container in (set, frozenset, abc.Set, abc.MutableSet):
        item = _compile_cached(args[0], seen) if args else _any
        return _set(item, frozenset if container is frozenset else set)
    if container in (dict, abc.Mapping, abc.MutableMapping):
        kc = _compile_cached(args[0], seen) if args else _any
        vc = _compile_cached(args[1], seen) if len(args) > 1 else _any
        return _dict(kc, vc)
    if isinstance(tp, type):
        if _is_typeddict(tp):
            return _typeddict(tp, seen)
        if dataclasses.is_dataclass(tp):
            return _dataclass(tp, seen)
        if issubclass(tp, enum.Enum):
            return _enum(tp)
        validate = getattr(tp, "model_validate", None)
        if validate is not None and callable(validate):
            return _pydantic_model(tp)
        return _instance(tp)
    raise TypeError(f"ferry cannot validate payload fields of type {tp!r}")


def _is_required_wrapper(origin: Any) -> bool:
    name = getattr(origin, "_name", None) or getattr(origin, "__name__", None)
    return name in ("Required", "NotRequired", "ReadOnly")


def _is_typeddict(tp: type) -> bool:
    return issubclass(tp, dict) and hasattr(tp, "__required_keys__") and hasattr(tp, "__annotations__")


def _none(v: Any) -> Any:
    if v is not None:
        raise _Fail(f"expected null, got {_kind(v)}")
    return v


def _bool(v: Any) -> Any:
    if v is True or v is False:
        return v
    raise _Fail(f"expected a boolean, got {_kind(v)}")


def _int(v: Any) -> Any:
    if type(v) is int or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise _Fail(f"expected an integer, got {_kind(v)}")


def _float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v
    if t is int or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return float(v)
    raise _Fail(f"expected a number, got {_kind(v)}")


def _str(v: Any) -> Any:
    if type(v) is str or isinstance(v, str):
        return v
    raise _Fail(f"expected a string, got {_kind(v)}")


def _union(convs: list[Conv], name: str) -> Conv:
    # `X | None` is the common case: test None first, then the one type.
    if len(convs) == 2 and _none in convs:
        inner = convs[0] if convs[1] is _none else convs[1]

        def optional(v: Any) -> Any:
            if v is None:
                return None
            return inner(v)

        return optional

    def union(v: Any) -> Any:
        deepest: _Fail | None = None
        for c in convs:
            try:
                return c(v)
            except _Fail as f:
                if f.path and (deepest is None or len(f.path) > len(deepest.path)):
                    deepest = f
        if deepest is not None:
            # One member matched the value's shape and failed deeper: that error says more.
            raise deepest
        raise _Fail(f"expected {name}, got {_kind(v)}")

    return union


def _literal(values: tuple[Any, ...]) -> Conv:
    allowed = [(type(x), x) for x in values]
    text = ", ".join(repr(x.value if isinstance(x, enum.Enum) else x) for x in values)

    def literal(v: Any) -> Any:
        for t, x in allowed:
            if isinstance(x, enum.Enum):
                if v == x.value and type(v) is type(x.value):
                    return x
            elif type(v) is t and v == x:
                return v
        raise _Fail(f"expected one of {text}, got {v!r}")

    return literal


def _list(item: Conv) -> Conv:
    if item is _any:

        def any_list(v: Any) -> Any:
            if isinstance(v, list):
                return v
            if isinstance(v, tuple):
                return list(v)
            raise _Fail(f"expected an array, got {_kind(v)}")

        return any_list

    def list_(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Fail(f"expected an array, got {_kind(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Fail as f:
                f.path.append(i)
                raise
        return out

    return list_


def _tuple_var(item: Conv) -> Conv:
    lst = _list(item)

    def tuple_(v: Any) -> Any:
        return tuple(lst(v))

    return tuple_


def _tuple_fixed(items: list[Conv]) -> Conv:
    n = len(items)

    def tuple_(v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise _Fail(f"expected an array, got {_kind(v)}")
        if len(v) != n:
            raise _Fail(f"expected an array of {n} items, got {len(v)}")
        out = []
        for i, (c, x) in enumerate(zip(items, v, strict=True)):
            try:
                out.append(c(x))
            except _Fail as f:
                f.path.append(i)
                raise
        return tuple(out)

    return tuple_


def _set(item: Conv, kind: type[set[Any]] | type[frozenset[Any]]) -> Conv:
    lst = _list(item)

    def set_(v: Any) -> Any:
        if isinstance(v, (set, frozenset)):
            v = list(v)
        try:
            return kind(lst(v))
        except TypeError as e:
            raise _Fail(f"items must be hashable: {e}") from None

    return set_


def _dict(key: Conv, value: Conv) -> Conv:
    if key is _any and value is _any:

        def any_dict(v: Any) -> Any:
            if not isinstance(v, dict):
                raise _Fail(f"expected an object, got {_kind(v)}")
            return v

        return any_dict

    def dict_(v: Any) -> Any:
        if not isinstance(v, dict):
            raise _Fail(f"expected an object, got {_kind(v)}")
        out = {}
        for k, x in v.items():
            try:
                out[key(k)] = value(x)
            except _Fail as f:
                f.path.append(str(k))
                raise
        return out

    return dict_


def _field_hints(tp: type, extras: bool = False) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp, include_extras=extras)
    except Exception:
        return {k: v for k, v in getattr(tp, "__annotations__", {}).items() if not isinstance(v, str)}


def _typeddict(tp: type, seen: dict[int, Conv]) -> Conv:
    hints = _field_hints(tp, extras=True)
    convs = {k: _compile_cached(h, seen) for k, h in hints.items()}
    keys = set(getattr(tp, "__required_keys__", frozenset()))
    for k, h in hints.items():
        # With `from __future__ import annotations` the class could not see `NotRequired`
        # in its string annotations (Python < 3.12): the resolved hints can.
        wrapper = getattr(typing.get_origin(h), "_name", None)
        if wrapper == "NotRequired":
            keys.discard(k)
        elif wrapper == "Required":
            keys.add(k)
    required = frozenset(keys)

    def typed_dict(v: Any) -> Any:
        if not isinstance(v, dict):
            raise _Fail(f"expected an object, got {_kind(v)}")
        missing = required - v.keys()
        if missing:
            f = _Fail("field required")
            f.path.append(sorted(missing)[0])
            raise f
        out = {}
        for k, x in v.items():
            c = convs.get(k)
            if c is None:
                continue  # as pydantic does: keys the TypedDict does not name are ignored
            try:
                out[k] = c(x)
            except _Fail as f:
                f.path.append(k)
                raise
        return out

    return typed_dict


def _dataclass(tp: type, seen: dict[int, Conv]) -> Conv:
    hints = _field_hints(tp)
    fields = [f for f in dataclasses.fields(tp) if f.init]
    convs = {f.name: _compile_cached(hints.get(f.name, Any), seen) for f in fields}
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )

    def dataclass_(v: Any) -> Any:
        if isinstance(v, tp):
            return v
        if not isinstance(v, dict):
            raise _Fail(f"expected an object ({tp.__name__}), got {_kind(v)}")
        missing = required - v.keys()
        if missing:
            f = _Fail("field required")
            f.path.append(sorted(missing)[0])
            raise f
        kw = {}
        for k, x in v.items():
            c = convs.get(k)
            if c is None:
                continue  # unknown keys are ignored, as pydantic does for dataclasses
            try:
                kw[k] = c(x)
            except _Fail as f:
                f.path.append(k)
                raise
        try:
            return tp(**kw)
        except (TypeError, ValueError) as e:
            raise _Fail(str(e)) from None

    return dataclass_


def _enum(tp: type[enum.Enum]) -> Conv:
    values = ", ".join(repr(m.value) for m in tp)

    def enum_(v: Any) -> Any:
        if isinstance(v, tp):
            return v
        try:
            return tp(v)
        except ValueError:
            raise _Fail(f"expected one of {values}, got {v!r}") from None

    return enum_


def _pydantic_model(tp: type) -> Conv:
    def model(v: Any) -> Any:
        if isinstance(v, tp):
            return v
        try:
            return tp.model_validate(v)  # type: ignore[attr-defined]
        except ValueError as e:
            errors = getattr(e, "errors", None)
            if callable(errors):
                err = errors(include_url=False)[0]
                f = _Fail(err["msg"])
                f.path.extend(reversed(list(err["loc"])))
                raise f from None
            raise _Fail(str(e)) from None

    return model


def _instance(tp: type) -> Conv:
    def instance(v: Any) -> Any:
        if isinstance(v, tp):
            return v
        raise _Fail(f"expected {tp.__name__}, got {_kind(v)}")

    return instance
