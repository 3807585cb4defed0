"""The API pages (docs/api/*.rst) document every public name of every public module.

A name is public when it is in the module's ``__all__``, or, without one, when it is a function
or class defined in a non-private jaxreg module. It is documented when some ``.. auto*::``
directive of the API pages resolves to the same object, through whatever public path (so a
re-export documented once counts for every module that re-exports it).
"""
import importlib
import inspect
import re
from pathlib import Path

API = Path(__file__).resolve().parents[1] / "docs" / "api"
MODULES = (
    "jaxreg",
    "jaxreg.transforms.masks",
    "jaxreg.transforms.penalties",
    "jaxreg.transforms.schedules",
    "jaxreg.nn",
    "jaxreg.nnx",
    "jaxreg.data",
    "jaxreg.models",
    "jaxreg.models.nnx",
    "jaxreg.train",
    "jaxreg.train.distributed",
    "jaxreg.train.tensorboard",
)


def resolve(path: str, module: bool = False):
    if module:  # automodule
        return importlib.import_module(path)
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):  # as autodoc: the object is an attribute
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def documented() -> dict[int, str]:
    paths = re.findall(r"^\.\. (auto\w+):: (\S+)",
                       "".join(p.read_text() for p in API.glob("*.rst")), re.M)
    assert len(paths) > 50, paths
    return {id(resolve(path, kind == "automodule")): path for kind, path in paths}


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__.startswith("jaxreg.") and not obj.__module__.startswith("jaxreg._")]


def test_every_public_name_is_documented():
    docs = documented()
    missing = [f"{m}.{name}" for m in MODULES for name in public_names(importlib.import_module(m))
               if not inspect.ismodule(getattr(importlib.import_module(m), name))  # own pages
               and id(getattr(importlib.import_module(m), name)) not in docs]
    assert not missing, f"not in docs/api/*.rst: {missing}"


def test_public_names_found_in_every_module():
    for m in MODULES:
        assert public_names(importlib.import_module(m)), m
