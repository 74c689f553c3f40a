"""Tasks without a server: the payload validator (pydantic's and the built-in one give the same
verdicts on JSON payloads and name the same field), decorator options, the decorated object
still being the function, and eager mode."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import typing
from typing import Any, Literal, Optional, Union

import pytest

import ferry
from ferry._task import to_json
from ferry._validate import make_validator, pydantic_enabled
from ferry.testing import eager

try:
    # pydantic takes only typing_extensions' TypedDict before Python 3.12 (typing's falls back
    # to the built-in checker, tested below).
    from typing_extensions import NotRequired, TypedDict
except ImportError:  # pragma: no cover - a venv with httpx alone on a new Python
    from typing import NotRequired, TypedDict  # type: ignore[attr-defined,no-redef]


def _has_pydantic() -> bool:
    try:
        import pydantic  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = [
    pytest.param(False, id="builtin"),
    pytest.param(
        True, id="pydantic", marks=pytest.mark.skipif(not _has_pydantic(), reason="pydantic not installed")
    ),
]


@dataclasses.dataclass
class Item:
    name: str
    qty: int = 1


class Address(TypedDict):
    city: str
    zip: NotRequired[str]


class Partial(TypedDict, total=False):
    a: int
    b: str


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def order(
    order_id: int,
    items: list[Item],
    address: Address,
    note: Optional[str] = None,  # noqa: UP045 - the old spelling must work too
    tags: tuple[str, ...] = (),
    labels: set[str] | None = None,
    scores: dict[str, float] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    color: Color = Color.RED,
    pair: tuple[int, str] | None = None,
    either: Union[int, list[int]] = 0,  # noqa: UP007
    extra: Partial | None = None,
    anything: Any = None,
) -> None:
    pass


GOOD = {
    "order_id": 7,
    "items": [{"name": "a"}, {"name": "b", "qty": 3}],
    "address": {"city": "Oslo"},
    "note": None,
    "tags": ["x", "y"],
    "labels": ["p", "q", "p"],
    "scores": {"a": 1, "b": 2.5},
    "mode": "slow",
    "color": "blue",
    "pair": [1, "one"],
    "either": [1, 2],
    "extra": {"b": "only b"},
    "anything": {"deep": [1, {"x": None}]},
}


@pytest.mark.parametrize("use_pydantic", BACKENDS)
def test_a_good_payload_becomes_call_arguments(use_pydantic: bool) -> None:
    v = make_validator(order, use_pydantic=use_pydantic)
    out = v(GOOD)
    assert out["order_id"] == 7
    assert out["items"] == [Item("a", 1), Item("b", 3)]
    assert out["address"] == {"city": "Oslo"}
    assert out["tags"] == ("x", "y")
    assert out["labels"] == {"p", "q"}
    assert out["scores"] == {"a": 1.0, "b": 2.5}
    assert isinstance(out["scores"]["a"], float)
    assert out["mode"] == "slow"
    assert out["color"] is Color.BLUE
    assert out["pair"] == (1, "one")
    assert out["either"] == [1, 2]
    assert out["extra"] == {"b": "only b"}
    assert out["anything"] == {"deep": [1, {"x": None}]}
    # Defaults stay the function's: absent keys are not filled in.
    assert set(v({"order_id": 1, "items": [], "address": {"city": "x"}})) == {"order_id", "items", "address"}


BAD = [
    ({**GOOD, "order_id": "seven"}, "order_id"),
    ({**GOOD, "order_id": [7]}, "order_id"),
    ({**GOOD, "items": [{"name": "a"}, {"name": "b"}, {"name": 3}]}, "items[2].name"),
    ({**GOOD, "items": [{"qty": 1}]}, "items[0].name"),
    ({**GOOD, "items": {"name": "a"}}, "items"),
    ({**GOOD, "address": {"zip": "0150"}}, "address.city"),
    ({**GOOD, "address": {"city": "Oslo", "zip": 150}}, "address.zip"),
    ({**GOOD, "note": 5}, "note"),
    ({**GOOD, "tags": ["x", 1]}, "tags[1]"),
    ({**GOOD, "scores": {"a": "high"}}, "scores.a"),
    ({**GOOD, "mode": "medium"}, "mode"),
    ({**GOOD, "color": "green"}, "color"),
    ({**GOOD, "pair": [1, "one", 2]}, "pair"),
    ({**GOOD, "extra": {"a": "not an int"}}, "extra.a"),
    ({k: v for k, v in GOOD.items() if k != "address"}, "address"),
    ({**GOOD, "surprise": 1}, "surprise"),
]


@pytest.mark.parametrize("use_pydantic", BACKENDS)
@pytest.mark.parametrize(("payload", "field"), BAD, ids=[f for _, f in BAD])
def test_a_bad_payload_names_its_field(use_pydantic: bool, payload: dict[str, Any], field: str) -> None:
    v = make_validator(order, use_pydantic=use_pydantic)
    with pytest.raises(ferry.PayloadInvalid) as info:
        v(payload)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert isinstance(info.value, ValueError)


def test_builtin_scalars_are_strict() -> None:
    def f(i: int, x: float, b: bool, s: str) -> None:
        pass

    v = make_validator(f, use_pydantic=False)
    assert v({"i": 1, "x": 2, "b": True, "s": "t"}) == {"i": 1, "x": 2.0, "b": True, "s": "t"}
    for payload, field in [
        ({"i": True, "x": 1.0, "b": True, "s": ""}, "i"),  # a bool is not an int
        ({"i": 1.5, "x": 1.0, "b": True, "s": ""}, "i"),
        ({"i": 1, "x": False, "b": True, "s": ""}, "x"),
        ({"i": 1, "x": 1.0, "b": 1, "s": ""}, "b"),
        ({"i": 1, "x": 1.0, "b": True, "s": 5}, "s"),
    ]:
        with pytest.raises(ferry.PayloadInvalid) as info:
            v(payload)
        assert info.value.field == field


@pytest.mark.parametrize("use_pydantic", BACKENDS)
def test_payload_shapes(use_pydantic: bool) -> None:
    def none() -> None:
        pass

    def kw(a: int, **rest: int) -> None:
        pass

    v = make_validator(none, use_pydantic=use_pydantic)
    assert v(None) == {}
    assert v({}) == {}
    with pytest.raises(ferry.PayloadInvalid) as info:
        v([1, 2])
    assert info.value.field is None
    with pytest.raises(ferry.PayloadInvalid):
        v({"a": 1})
    v = make_validator(kw, use_pydantic=use_pydantic)
    assert v({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ferry.PayloadInvalid) as info:
        v({"a": 1, "b": "two"})
    assert info.value.field == "b"


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


def test_recursive_dataclass_and_unannotated() -> None:
    def tree(root: Node, free) -> None:  # type: ignore[no-untyped-def]
        pass

    v = make_validator(tree, use_pydantic=False)
    out = v({"root": {"value": 1, "children": [{"value": 2}]}, "free": object()})
    assert out["root"] == Node(1, [Node(2)])
    with pytest.raises(ferry.PayloadInvalid) as info:
        v({"root": {"value": 1, "children": [{"value": "x"}]}, "free": 1})
    assert info.value.field == "root.children[0].value"


class Point(typing.TypedDict):
    x: int
    y: NotRequired[int]


@pytest.mark.parametrize("use_pydantic", BACKENDS)
def test_typing_typeddict_works_with_either(use_pydantic: bool) -> None:
    def f(p: Point) -> None:
        pass

    v = make_validator(f, use_pydantic=use_pydantic)
    assert v({"p": {"x": 1}}) == {"p": {"x": 1}}
    with pytest.raises(ferry.PayloadInvalid) as info:
        v({"p": {"x": "1a", "y": 2}})
    assert info.value.field == "p.x"


def test_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_NO_PYDANTIC", "1")
    assert not pydantic_enabled()
    monkeypatch.delenv("FERRY_NO_PYDANTIC")
    assert pydantic_enabled() == _has_pydantic()


# ---- decorators ---------------------------------------------------------------------------


def test_the_decorated_object_is_still_the_function() -> None:
    w = ferry.Worker("http://127.0.0.1:1")

    @w.task("add", retries=3, timeout_ms=60_000, lease_ms=30_000, priority=5)
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    assert add(1, 2) == 3
    assert add(a=4) == 4
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert add.name == "add"
    assert add.job_fields == {"max_attempts": 4, "timeout_ms": 60_000, "lease_ms": 30_000, "priority": 5}
    assert not add.is_async
    assert w.tasks == {"add": add}

    @w.task()
    async def double(x: int) -> int:
        return 2 * x

    assert double.name == "double"
    assert double.is_async
    assert asyncio.run(double(4)) == 8
    assert add.with_options(delay_ms=10).job_fields["delay_ms"] == 10
    assert "delay_ms" not in add.job_fields


def test_module_level_tasks_register_for_discovery() -> None:
    from ferry._task import registered_tasks

    @ferry.task
    def registered_bare(x: int) -> int:
        return x

    @ferry.task("registered-named", max_attempts=2)
    async def registered_named(x: int) -> int:
        return x

    names = {t.name for t in registered_tasks()}
    assert {"registered_bare", "registered-named"} <= names
    assert registered_named.job_fields == {"max_attempts": 2}
    assert registered_bare(3) == 3


def test_decorator_mistakes_are_caught_early() -> None:
    w = ferry.Worker()
    with pytest.raises(ValueError, match="queue name"):
        w.task("no spaces allowed")(lambda: None)
    with pytest.raises(ValueError, match="retries or max_attempts"):
        w.task("x", retries=3, max_attempts=2)
    with pytest.raises(TypeError, match="positional-only"):

        @w.task("posonly")
        def posonly(a: int, /) -> None:
            pass

    with pytest.raises(ValueError, match="differ"):
        w.task("a", queue="b")(lambda: None)


# ---- eager mode ---------------------------------------------------------------------------


def test_eager_runs_inline_through_serialise_validate_call() -> None:
    calls: list[Any] = []
    w = ferry.Worker()

    @w.task("ship")
    def ship(item: Item, count: int = 1) -> dict[str, Any]:
        job = ferry.current_job()
        calls.append((item, count, job.queue, job.attempt))
        return {"shipped": item.name}

    with eager():
        # A dataclass argument goes through JSON and comes back a dataclass.
        assert ship.enqueue(item=Item("box", 2), count=3) == {"shipped": "box"}
        with pytest.raises(ferry.PayloadInvalid) as info:
            ship.enqueue(item={"name": 5})
        assert info.value.field == "item.name"
    assert calls == [(Item("box", 2), 3, "ship", 1)]


def test_eager_async_task_and_errors_raise_at_the_call_site() -> None:
    w = ferry.Worker()

    @w.task("boom")
    async def boom(n: int) -> int:
        if n < 0:
            raise RuntimeError("negative")
        await asyncio.sleep(0)
        return n * 2

    @eager
    def sync_caller() -> None:
        assert boom.enqueue(n=2) == 4
        with pytest.raises(RuntimeError, match="negative"):
            boom.enqueue(n=-1)

    sync_caller()

    @eager
    async def async_caller() -> None:
        assert await boom.aenqueue(n=5) == 10
        with pytest.raises(RuntimeError, match="aenqueue"):
            boom.enqueue(n=1)  # blocking inside a loop is refused

    asyncio.run(async_caller())


def test_to_json() -> None:
    assert to_json({"a": (1, 2), "b": {3}, "c": Color.RED, "d": Item("x")}) == {
        "a": [1, 2],
        "b": [3],
        "c": "red",
        "d": {"name": "x", "qty": 1},
    }


def test_current_job_outside_a_job() -> None:
    with pytest.raises(RuntimeError, match="outside"):
        ferry.current_job()
