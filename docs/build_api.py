"""Write docs/api.md, the API reference, from the numpydoc docstrings of the public names.

Usage (from the repository root)::

    python docs/build_api.py          # rewrite docs/api.md
    python docs/build_api.py --check  # exit 1 if docs/api.md is out of date

The package's ``__all__`` comes first, then every public submodule (new modules appear by
themselves) with the functions and classes it defines: its ``__all__``, else every name
without a leading underscore. The output is plain Markdown, so it renders on any
forge without a documentation build.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
PACKAGE = "skfastflow"
# The command line is documented in the user guide; features, images and image_input are the estimator's
# machinery, whose behaviour the estimator's docstrings describe.
SKIPPED_MODULES = {"skfastflow.cli", "skfastflow.__main__", "skfastflow.features", "skfastflow.images", "skfastflow.image_input"}
# Methods documented for each class, in this order, when the class defines them.
CLASS_METHOD_ORDER = (
    "fit", "score_samples", "decision_function", "predict", "predict_maps", "p_values", "graph_input", "score", "transform", "forward"
)
# numpydoc sections whose entries are "name : type" followed by an indented description.
FIELD_SECTIONS = {"Parameters", "Returns", "Yields", "Attributes", "Raises", "Warns", "Other Parameters"}

sys.path.insert(0, str(ROOT))


def public_modules() -> list:
    """The package, then its public submodules sorted by name."""
    package = importlib.import_module(PACKAGE)
    names = sorted(
        info.name
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACKAGE}.")
        if not any(part.startswith("_") for part in info.name.split(".")) and info.name not in SKIPPED_MODULES
    )
    return [package] + [importlib.import_module(name) for name in names]


def public_objects(module, already_documented: set) -> list[tuple[str, object]]:
    """The functions and classes a module offers, in ``__all__`` order or by name.

    The package itself offers its ``__all__``; a submodule offers only what it defines, so
    that re-exported names are documented once, where a user first meets them.
    """
    if module.__name__ == PACKAGE:
        names = [name for name in module.__all__ if not name.startswith("_")]
    else:
        names = getattr(module, "__all__", None) or sorted(
            name for name, value in vars(module).items() if not name.startswith("_")
        )
    objects = []
    for name in names:
        value = getattr(module, name)
        defined_here = module.__name__ == PACKAGE or getattr(value, "__module__", None) == module.__name__
        if (inspect.isfunction(value) or inspect.isclass(value)) and defined_here and value not in already_documented:
            already_documented.add(value)
            objects.append((name, value))
    return objects


def rst_to_markdown(text: str) -> str:
    """Inline reStructuredText to Markdown: roles and double back-quotes become code."""

    def role(match: re.Match) -> str:
        # :class:`~a.b.C` shows as C, :class:`a.b.C` as a.b.C.
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    text = re.sub(r":(?:class|func|meth|mod|attr|obj|data|exc):`(~?)([^`]+)`", role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def docstring_to_markdown(docstring: str | None) -> str:
    """Render a numpydoc docstring: sections become bold headings, fields become lists."""
    if not docstring:
        return "*(no docstring)*\n"
    lines = inspect.cleandoc(docstring).splitlines()
    out: list[str] = []
    section = None
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and len(following.strip()) >= 3 and set(following.strip()) == {"-"}:
            section = line.strip()
            out.append(f"\n**{section}**\n")
            index += 2
            block_end = _section_end(lines, index)
            block = lines[index:block_end]
            if section in FIELD_SECTIONS:
                out.extend(_fields(block, depth=0))
                index = block_end
            elif section == "See Also":
                out.extend(f"- {rst_to_markdown(entry.strip())}" for entry in block if entry.strip())
                index = block_end
            continue
        if section == "Examples" and line.lstrip().startswith(">>>"):
            # A doctest runs until the next blank line: prompts, continuations and output.
            block_end = index
            while block_end < len(lines) and lines[block_end].strip():
                block_end += 1
            out.extend(["```pycon", *lines[index:block_end], "```"])
            index = block_end
            continue
        if line.rstrip().endswith("::"):
            # A literal block: the indented lines that follow.
            out.append(rst_to_markdown(line.rstrip()[:-1]))
            block_end = index + 1
            while block_end < len(lines) and (lines[block_end].startswith(" ") or not lines[block_end].strip()):
                block_end += 1
            out.extend(["", "```", textwrap.dedent("\n".join(lines[index + 1 : block_end])).strip("\n"), "```", ""])
            index = block_end
            continue
        out.append(rst_to_markdown(line))
        index += 1
    return "\n".join(out).strip() + "\n"


def _section_end(lines: list[str], start: int) -> int:
    """Index of the next numpydoc section heading after ``start``, or the end."""
    for index in range(start, len(lines) - 1):
        underline = lines[index + 1].strip()
        if lines[index].strip() and len(underline) >= 3 and set(underline) == {"-"}:
            return index
    return len(lines)


def _fields(lines: list[str], depth: int) -> list[str]:
    """Markdown bullets for numpydoc fields ``name : type`` with indented descriptions.

    Descriptions may hold nested fields (a Bunch's attributes), which become nested bullets.
    """
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        is_entry = line.strip() and not line.startswith(" ") and (depth == 0 or _indented(lines, index + 1))
        if not is_entry:
            if line.strip() and out:  # text between nested entries continues the previous bullet
                out[-1] += " " + rst_to_markdown(line.strip())
            index += 1
            continue
        body_end = index + 1
        while body_end < len(lines) and (lines[body_end].startswith(" ") or (not lines[body_end].strip() and _indented(lines, body_end + 1))):
            body_end += 1
        body = textwrap.dedent("\n".join(lines[index + 1 : body_end])).splitlines()
        text, nested = _split_text_and_fields(body)
        name, _, kind = line.partition(" : ")
        entry = "  " * depth + f"- **{name.strip()}**" + (f" : *{' '.join(kind.split())}*" if kind else "")
        out.append(rst_to_markdown(entry + (f" — {text}" if text else "")))
        out.extend(_fields(nested, depth + 1))
        index = body_end
    return out


def _split_text_and_fields(body: list[str]) -> tuple[str, list[str]]:
    """The leading prose of a field's description, and the nested fields after it."""
    for index, line in enumerate(body):
        if line.strip() and not line.startswith(" ") and _indented(body, index + 1):
            return " ".join(part.strip() for part in body[:index] if part.strip()), body[index:]
    return " ".join(part.strip() for part in body if part.strip()), []


def _indented(lines: list[str], index: int) -> bool:
    return index < len(lines) and lines[index].startswith(" ")


def signature(name: str, obj) -> str:
    """``name(parameters)``, with annotations evaluated where possible (shown unquoted)."""
    for eval_str in (True, False):
        try:
            parameters = inspect.signature(obj, eval_str=eval_str)
            if inspect.isclass(obj):  # a constructor's "-> None" says nothing
                parameters = parameters.replace(return_annotation=inspect.Signature.empty)
            return f"{name}{parameters}"
        except (NameError, TypeError, ValueError):
            continue
    return name


def anchor(text: str) -> str:
    """The anchor GitHub-style renderers give a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", text.lower()).replace(" ", "-")


def document_object(module_name: str, name: str, obj) -> list[str]:
    prefix = "class " if inspect.isclass(obj) else ""
    parts = [f"### `{name}`\n", f"```python\n{prefix}{module_name}.{signature(name, obj)}\n```\n", docstring_to_markdown(obj.__doc__)]
    if inspect.isclass(obj):
        for method_name in CLASS_METHOD_ORDER:
            # Methods of the class or of skfastflow's own mixins (not scikit-learn's or torch's).
            owner = next((klass for klass in obj.__mro__ if method_name in klass.__dict__), None)
            own = owner is not None and owner.__module__.startswith("skfastflow")
            method = owner.__dict__[method_name] if own else None
            if method is not None and method.__doc__:
                parts.append(f"#### `{name}.{method_name}`\n")
                parts.append(f"```python\n{signature(method_name, method)}\n```\n")
                parts.append(docstring_to_markdown(method.__doc__))
    return parts


def build() -> str:
    already_documented: set = set()
    documented = [(module, public_objects(module, already_documented)) for module in public_modules()]
    documented = [(module, objects) for module, objects in documented if objects]
    parts = [
        "# API reference\n",
        "Generated from the docstrings by `python docs/build_api.py`; do not edit by hand.",
        "Names listed under `skfastflow` are importable from the package itself.\n",
    ]
    for module, objects in documented:
        names = ", ".join(f"[`{name}`](#{anchor(name)})" for name, _ in objects)
        parts.append(f"- `{module.__name__}`: {names}")
    parts.append("")
    for module, objects in documented:
        parts.append(f"## `{module.__name__}`\n")
        summary = (module.__doc__ or "").strip().split("\n\n")[0]
        parts.append(rst_to_markdown(summary) + "\n")
        for name, obj in objects:
            parts.extend(document_object(module.__name__, name, obj))
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date instead of writing it")
    args = parser.parse_args()
    text = build()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run: python docs/build_api.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
