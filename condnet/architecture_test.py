"""The package's one-way import rule, checked by walking every module's imports, and the
rule that a run's file names are written in one module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent

# Each part of condnet may import only the parts listed here (and itself).
# `runs` (the application: recipe, run directories, CLI) may import anything;
# nothing outside it imports it.
ALLOWED = {
    "choices": set(),
    "hierarchy": set(),
    "testing": {"hierarchy", "models"},
    "models": {"hierarchy"},
    "data": {"hierarchy"},
    "vision": {"hierarchy", "models"},
    "text": {"hierarchy", "models"},
    "training": {"hierarchy", "models", "data", "vision", "text"},
    "evaluation": {"hierarchy", "models", "data", "vision", "text"},
    "deploy": {"hierarchy", "models", "data", "evaluation"},
    "runs": {
        *("hierarchy", "models", "data", "vision", "text"),
        *("training", "evaluation", "deploy", ""),
    },
    "": {
        *("hierarchy", "models", "data", "vision", "text"),
        *("training", "evaluation", "deploy", "runs"),
    },
}

# condnet/choices.py (the names options take, no imports) is below every layer.
for _imports_of_part in ALLOWED.values():
    _imports_of_part.add("choices")
ALLOWED["choices"] = set()


def _part(module):
    """'condnet.models.routing' -> 'models'; 'condnet', 'condnet.__main__' -> ''."""
    parts = module.split(".")
    # condnet/__main__.py (`python -m condnet`) is the package's own entry point.
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else ""


def _module_name(path):
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _imports(path):
    """Every condnet module a file imports, at top level or inside functions."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "condnet":
                yield name


def _library_files():
    return [p for p in PACKAGE.rglob("*.py") if not p.name.endswith("_test.py")]


def test_imports_follow_the_layers():
    wrong = []
    for path in _library_files():
        source = _part(_module_name(path))
        for name in _imports(path):
            target = _part(name)
            known = target in ALLOWED or (PACKAGE / f"{target}.py").exists()
            if target != source and known and target not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_nothing_outside_runs_imports_runs():
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in _library_files()
        if _part(_module_name(path)) not in ("runs", "")
        and any(_part(name) == "runs" for name in _imports(path))
    ]
    assert not offenders


# Modules kept only so that old imports keep working: condnet's own code imports the
# module of each concept instead.
COMPATIBILITY_MODULES = {"condnet.data.folders": "condnet.data.folders_test"}


def test_nothing_in_condnet_imports_a_compatibility_module():
    files = [*_library_files(), *PACKAGE.rglob("*_test.py")]
    found = [
        f"{_module_name(path)} imports {name}"
        for old, exempt in COMPATIBILITY_MODULES.items()
        for path in files
        if _module_name(path) not in (old, exempt)
        for name in _imports(path)
        if name == old or name.startswith(old + ".")
    ]
    assert found == [], "import the concept's own module (scan, decode, image_folder, splits)"


def test_the_rule_checker_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from condnet.runs.recipe import train\n")
    assert list(_imports(path)) == ["condnet.runs.recipe", "condnet.runs.recipe.train"]


# === Run-file names ===

BENCHMARKS = PACKAGE.parent / "benchmarks"
REGISTRY = PACKAGE / "runs" / "files.py"


def _run_file_names():
    """The file names `condnet/runs/files.py` registers (`"metrics.json"`, ...)."""
    from condnet.runs import files

    return {
        value
        for name, value in vars(files).items()
        if name.isupper() and isinstance(value, str) and "." in value
    }


def _literal_names(path, names):
    """(line, name) of every string literal in `path` that is one of `names`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in names:
            yield node.lineno, node.value


def test_run_file_names_are_written_only_in_the_registry():
    names = _run_file_names()
    sources = [*_library_files(), *BENCHMARKS.glob("*.py")]
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line} writes {name!r}"
        for path in sources
        if path != REGISTRY and not path.name.endswith("_test.py")
        for line, name in _literal_names(path, names)
    ]
    assert not found, "import the name from condnet.runs.files instead:\n" + "\n".join(found)


def test_the_name_checker_sees_a_literal_run_file_name(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text('def f(run):\n    return f"{run / \'metrics.json\'}", "metrics.json.bak"\n')
    assert list(_literal_names(path, _run_file_names())) == [(2, "metrics.json")]


# === Keras's private names ===

# The private Keras names condnet still uses, why, and the only files that may use them:
# Keras 3 has no public way to do what each does. Where a public way exists the code
# uses it (`tap_shapes`, `get_compile_config`, `super().compute_metrics`, a model's name
# at construction), and `PRIVATE_REFUSED` keeps the old private ways out.
KERAS_PRIVATE_NAMES = {
    "_flatten_layers": (
        "every layer of a model, nested ones included: `Model.layers` lists only the "
        "direct children, and a layer's own sublayers have no public list",
        {
            "models/conditional_model.py",
            "models/precision.py",
            "training/staged.py",
            "runs/extend.py",
            "runs/finish.py",
        },
    ),
    "_layers": (
        "the sublayers of one layer (a keras-hub block's attention and dense layers), "
        "to count their MACs",
        {"evaluation/cost.py"},
    ),
    "_keras_history": (
        "the layer that made a symbolic tensor: a trunk's output layer (the default "
        "tap), the layer before an expert's penultimate features",
        {"models/conditional_model.py", "evaluation/unknown_features.py"},
    ),
    "_inbound_nodes": (
        "the tensors a layer of a functional model was called on",
        {"evaluation/unknown_features.py"},
    ),
    "__setattr__": (
        "`object.__setattr__` on a frozen dataclass (TrainingOptions), never on a Keras object",
        {"runs/options.py"},
    ),
}

PRIVATE_REFUSED = (
    "_compile_config",  # override get_compile_config
    "_compile_metrics",  # super().compute_metrics
    "_maybe_symbolic_build",  # training/distribute.py's strategy takes Keras's calls
    "_symbolic_build",
    "_distribute_strategy",  # model.distribute_strategy
    "_tracker",
    "_name",  # a Keras name is given at construction
    "_tap_shapes",  # ConditionalModel.tap_shapes
)


def _private_uses(path):
    """(line, name) of every attribute of `KERAS_PRIVATE_NAMES` or `PRIVATE_REFUSED`."""
    watched = {*KERAS_PRIVATE_NAMES, *PRIVATE_REFUSED}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in watched:
            yield node.lineno, node.attr


def test_private_keras_names_are_used_only_where_the_list_allows():
    sources = [*_library_files(), *BENCHMARKS.glob("*.py")]
    found = []
    for path in sources:
        where = path.relative_to(PACKAGE).as_posix() if PACKAGE in path.parents else path.name
        for line, name in _private_uses(path):
            if where not in KERAS_PRIVATE_NAMES.get(name, ("", ()))[1]:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} uses {name}")
    assert not found, (
        "use Keras's public API, or add the name and the file to KERAS_PRIVATE_NAMES with "
        "the reason:\n" + "\n".join(found)
    )


def test_every_listed_private_name_is_still_needed():
    used = {
        (name, path.relative_to(PACKAGE).as_posix())
        for path in _library_files()
        for _, name in _private_uses(path)
    }
    stale = [
        f"{name} in {where}"
        for name, (_, files) in KERAS_PRIVATE_NAMES.items()
        for where in files
        if (name, where) not in used
    ]
    assert not stale, "no longer used; take them off KERAS_PRIVATE_NAMES:\n" + "\n".join(stale)


def test_the_private_name_checker_sees_an_attribute(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f(model):\n    model._name = 'x'\n    return model.name\n")
    assert list(_private_uses(path)) == [(2, "_name")]
