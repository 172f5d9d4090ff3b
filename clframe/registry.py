"""One registry type for strategies, scenarios, backbones and metrics.

Parts register by decorator when their module is imported::

    @register_strategy("ewc")
    class EWC(Strategy): ...

:func:`load_plugins` imports every module of the built-in plugin packages (discovery, no hand-kept
list), the modules installed packages declare under the ``clframe.plugins`` entry-point group, and
the modules named by the config key ``plugins`` (out-of-tree methods, e.g. ``plugins=[my_lab.methods]``).

``build(node)`` takes a config node ``{name: ..., **kwargs}`` and calls the registered
object with the kwargs; unknown names and unknown kwargs raise :class:`ConfigError`
listing the valid choices.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clframe.errors import ConfigError

PLUGIN_PACKAGES = (
    "clframe.backbones", "clframe.strategies", "clframe.scenarios", "clframe.metrics", "clframe.unlearning",
)  # fmt: skip
ENTRY_POINT_GROUP = "clframe.plugins"  # [project.entry-points."clframe.plugins"] my_lab = "my_lab.methods"


class Registry:
    """Maps names to classes or factory functions of one kind (e.g. ``strategy``)."""

    def __init__(self, kind: str, config_key: str | None = None):
        self.kind, self.config_key = kind, config_key or kind  # config_key: what errors name (`unlearning.lr`)
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def deco(obj: Callable) -> Callable:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            obj.registry_name = name
            return obj

        return deco

    def get(self, name: str) -> Callable:
        load_plugins()
        if name not in self._items:
            raise ConfigError(f"{self.config_key}.name", name, sorted(self._items))
        return self._items[name]

    def names(self, pattern: str = "*") -> list[str]:
        load_plugins()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def build(self, node: Mapping[str, Any], **extra: Any) -> Any:
        """Instantiate ``node['name']`` with the node's other keys plus ``extra``."""
        kwargs = {k: v for k, v in dict(node).items() if k != "name"}
        obj = self.get(node["name"])
        accepted = accepted_params(obj)
        if accepted is not None:
            for key in kwargs:
                if key not in accepted:
                    valid = sorted(accepted - set(extra))
                    hint = f"unknown option for {self.kind} {node['name']!r}"
                    raise ConfigError(f"{self.config_key}.{key}", kwargs[key], valid, hint=hint)
        check_types(self.config_key, obj, kwargs)
        return obj(**kwargs, **extra)


def accepted_params(obj: Callable) -> set[str] | None:
    """Keyword names ``obj`` accepts; for classes, follows ``**kwargs`` up the ``__init__`` chain.
    ``None`` if anything is accepted."""
    inits = [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__] if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for fn in inits:
        params = inspect.signature(fn).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return None


def _inits(obj: Callable) -> list[Callable]:
    if inspect.isclass(obj):
        return [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__ and c is not object]
    return [obj]


def _annotations(obj: Callable) -> dict[str, Any]:
    """Resolved parameter annotations of ``obj`` (for classes, of every ``__init__`` up the chain)."""
    hints: dict[str, Any] = {}
    for fn in reversed(_inits(obj)):
        try:
            hints.update(typing.get_type_hints(fn))
        except Exception:  # an annotation that cannot be resolved here is not checked
            continue
    hints.pop("return", None)
    return hints


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _list_like(v: Any) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str)) or type(v).__name__ == "ListConfig"


# annotation -> (what the error says is expected, the test a value must pass)
_PLAIN: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    type(None): ("null", lambda v: v is None),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a finite number", _finite_number),
    str: ("a string", lambda v: isinstance(v, str)),
}
_LIST = ("a list", _list_like)


def _expected(tp: Any) -> list[tuple[str, Callable[[Any], bool]]] | None:
    """The plain types ``tp`` allows (``None`` for annotations this check leaves alone)."""
    if tp in _PLAIN:
        return [_PLAIN[tp]]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(a) for a in typing.get_args(tp)]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return [_LIST]
    return None


def check_types(kind: str, obj: Callable, kwargs: Mapping[str, Any]) -> None:
    """Refuse a config value whose type does not match the annotation of the parameter it sets
    (``strategy.lam=abc``, ``shuffle_classes=maybe``, ``lr=nan``): a typed check before anything is built."""
    hints = _annotations(obj)
    for key, value in kwargs.items():
        expected = _expected(hints[key]) if key in hints else None
        if expected and not any(fits(value) for _, fits in expected):
            raise ConfigError(f"{kind}.{key}", value, " or ".join(what for what, _ in expected))


STRATEGIES = Registry("strategy")
SCENARIOS = Registry("scenario")
BACKBONES = Registry("backbone")
METRICS = Registry("metric")
EVALUATORS = Registry("evaluator")  # run after every stream event (retrieval, unlearning metrics, ...)
UNLEARNERS = Registry("unlearner", config_key="unlearning")  # answers forget requests
SUMMARIES = Registry("summary")  # what metrics.json reports of the accuracy matrix (cfg key `summaries`)
REGISTRIES = {r.kind: r for r in (STRATEGIES, SCENARIOS, BACKBONES, METRICS, EVALUATORS, UNLEARNERS, SUMMARIES)}

register_strategy = STRATEGIES.register
register_scenario = SCENARIOS.register
register_backbone = BACKBONES.register
register_metric = METRICS.register
register_evaluator = EVALUATORS.register
register_unlearner = UNLEARNERS.register
register_summary = SUMMARIES.register

_builtin_loaded = False
_discovered: set[str] = set()


def load_plugins(extra: Iterable[str] = ()) -> None:
    """Import every module under :data:`PLUGIN_PACKAGES` and the ``clframe.plugins`` entry points (once),
    then the modules in ``extra`` (config key ``plugins``); importing a module registers its parts."""
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        for pkg in PLUGIN_PACKAGES:
            discover(pkg)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            import_plugin(ep.value.split(":")[0], key=f"entry point {ENTRY_POINT_GROUP}:{ep.name}")
    for name in extra:
        import_plugin(str(name))


def package_dir(pkg: str) -> Path:
    """The folder of package ``pkg`` without importing it (``clframe.strategies`` lives in ``strategies/``)."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(pkg)
    return Path(list(spec.submodule_search_locations)[0])


def discover(pkg: str) -> None:
    """Import ``pkg`` and every module below it (registration by discovery; walks each package once)."""
    if pkg in _discovered:
        return
    _discovered.add(pkg)
    package = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{pkg}."):
        importlib.import_module(info.name)


def import_plugin(name: str, key: str = "plugins") -> None:
    """Import one plugin module; a module that cannot be found is a :class:`ConfigError` naming it."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
            raise  # the plugin exists but one of its own imports is missing: show that error
        raise ConfigError(key, name, "an importable module", hint=f"{err}; is its folder on PYTHONPATH?") from None


def scan_registrations(pattern: str = "*") -> dict[str, list[tuple[str, str]]]:
    """Find ``@register_<kind>("name")`` decorators by reading source files, without importing.

    ``clframe list`` uses this so that it answers in well under a second (importing
    the strategies imports torch and lightning, which takes ~10 s). A test checks that
    the scan agrees with the imported registry.
    Returns ``{kind: [(name, first sentence of its docstring), ...]}``.
    """
    found: dict[str, list[tuple[str, str]]] = {k: [] for k in REGISTRIES}
    for pkg in PLUGIN_PACKAGES:
        for path in sorted(package_dir(pkg).glob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    continue
                for dec in node.decorator_list:
                    if (
                        isinstance(dec, ast.Call)
                        and isinstance(dec.func, ast.Name)
                        and dec.func.id.startswith("register_")
                        and dec.args
                        and isinstance(dec.args[0], ast.Constant)
                    ):
                        kind = dec.func.id.removeprefix("register_")
                        name = dec.args[0].value
                        if kind in found and fnmatch.fnmatch(name, pattern):
                            found[kind].append((name, first_sentence(ast.get_docstring(node) or "")))
    return {k: sorted(v) for k, v in found.items()}


_SENTENCE_END = re.compile(r"(?<![ (]e\.g)(?<![ (]i\.e)(?<! al)(?<! vs)[.!?](?=\s+[A-Z\"(`]|\s*$)")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line (whole: never cut mid-sentence)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[: end.end()] if end else paragraph
