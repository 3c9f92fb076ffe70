"""Helpers for the parameterised notebooks: the parameter check, one-line project errors, inline
figures and tables, and the project's Jupyter kernel.

papermill only warns about a ``-p`` name the notebook does not declare; :func:`parameters` turns
that into an error. Declared parameters are the annotated one-liners of the ``parameters`` cell
(``seed: int = 0  # help``), which IPython records in ``__annotations__``. papermill injects its
values as a cell starting with ``# Parameters`` right after that cell, so the names that cell
assigns are the ones passed with ``-p``; names the notebook itself creates (a second Run All in the
same kernel) are never mistaken for parameters.

``python -m idd_lib.notebook install-kernel [--user]`` installs the kernel the notebooks name.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KERNEL_NAME = "idd-study"
KERNEL_DISPLAY_NAME = "IDD study (.venv)"
# papermill's injected-parameters cell starts with this comment (its Python translator)
_INJECTED_HEADER = "# Parameters"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
# errors the project raises about its input (and a diverged run): one line when raised from idd_lib itself
_INPUT_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError)


class ParameterError(ValueError):
    pass


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """Validate the notebook's parameters (names and types), write the normalised values back into
    ``namespace`` (the notebook's globals: a papermill number given for a text parameter becomes that
    text there too) and return them as a dict. Also installs :func:`one_line_errors`, so a bad
    parameter reads as one line."""
    one_line_errors()
    declared: dict[str, type] = dict(namespace.get("__annotations__", {}))
    unknown = sorted(_injected_names() - set(declared))
    if unknown:
        raise ParameterError(f"unknown notebook parameter(s) {unknown}; this notebook accepts {sorted(declared)}")
    values = {}
    for name, kind in declared.items():
        value = namespace[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str:
            value = _as_text(value)
        if isinstance(kind, type) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(f"parameter {name}: expected {kind.__name__}, got {value!r}")
        values[name] = value
    namespace.update(values)
    return values


def _as_text(value: Any) -> Any:
    """A text parameter given as papermill's ``-p`` parses it: ``-p seeds 0`` arrives as 0 and
    ``-p seeds "[0, 1]"`` as a list; both mean the comma-separated text ("0", "0,1")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
                                                for v in value):
        return ",".join(map(str, value))
    return value


def _injected_names() -> set[str]:
    """Names assigned by papermill's injected cell when it ran just before the calling cell."""
    shell = _shell()
    history = shell.history_manager.input_hist_raw if shell is not None else []
    if len(history) < 2 or not history[-2].startswith(_INJECTED_HEADER):  # [-1] is the calling cell
        return set()
    tree = ast.parse(history[-2])
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _raised_by_project(tb) -> bool:
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def _run_by_papermill(shell) -> bool:
    """Whether this kernel ran a cell of parameters that papermill injected."""
    return any(cell.startswith(_INJECTED_HEADER) for cell in shell.history_manager.input_hist_raw)


def headless_stream():
    """Where line-by-line progress goes: the terminal of a headless run (a kernel papermill runs, a
    command whose stderr is a file); None where a live progress bar shows it (a terminal, Lab)."""
    shell = _shell()
    if shell is not None and getattr(shell, "history_manager", None) is not None:
        return sys.__stderr__ if _run_by_papermill(shell) else None
    return None if sys.stderr.isatty() else sys.stderr


def _show_one_line(shell, etype, value, tb, tb_offset=None):
    if not _raised_by_project(tb):  # a bug, not bad input: the full traceback
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # so %tb still shows it
    line = f"{etype.__name__}: {value}"
    if _run_by_papermill(shell):
        # the kernel's own stderr is the papermill CLI's terminal: the line comes before papermill's
        # traceback (on a line of its own, after papermill's progress bar). In Lab that stream is
        # forwarded to the notebook too, so there it would show twice.
        print(f"\nerror: {line}", file=sys.__stderr__, flush=True)
    shell._showtraceback(etype, value, [f"\x1b[31m{line}\x1b[0m  (%tb shows the traceback)"])


def one_line_errors() -> None:
    """In IPython, show an input error the project raised (bad parameter, missing run, bad data) as
    its one-line message instead of a traceback; other errors keep theirs."""
    shell = _shell()
    if shell is not None:
        shell.set_custom_exc(_INPUT_ERRORS, _show_one_line)


def show(fig, stem: str | Path) -> None:
    """Save ``fig`` as ``stem``.png/.pdf and display the saved PNG once, inline (any figure, also a
    bare ``matplotlib.figure.Figure``, which Jupyter would not show by itself)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display
    from PIL import Image as PILImage

    from .plots import SAVE_DPI, save_figure

    png = save_figure(fig, stem)[0]
    plt.close(fig)  # otherwise the inline backend shows a pyplot figure a second time
    with PILImage.open(png) as image:  # shown at Jupyter's usual 100 dpi
        width = round(image.width * 100 / SAVE_DPI)
    display(Image(filename=str(png), width=width))


def show_table(table, keys: str | Sequence[str], max_columns: int = 8, digits: int = 3) -> None:
    """Display ``table`` rounded and as the report prints it (:func:`idd_lib.names.printed`: readers'
    names, no all-empty columns, blank where a statistic is missing), split into parts of at most
    ``max_columns`` columns beside the ``keys`` columns (the index)."""
    from IPython.display import display

    from .names import blank_missing, column_label, printed

    keys = [keys] if isinstance(keys, str) else list(keys)
    table = blank_missing(printed(table.round(digits))).set_index([column_label(k) for k in keys])
    parts = max(1, -(-len(table.columns) // max_columns))
    width = -(-len(table.columns) // parts)  # parts of even width: 9 columns as 5 + 4, not 8 + 1
    for start in range(0, len(table.columns), width):
        display(table.iloc[:, start:start + width])


def install_kernel(user: bool = False) -> str:
    """Install this interpreter as the Jupyter kernel the notebooks name, in this environment
    (found by its Jupyter, papermill) or with ``user`` for every Jupyter of this user."""
    from ipykernel.kernelspec import install

    return install(user=user, prefix=None if user else sys.prefix, kernel_name=KERNEL_NAME,
                   display_name=KERNEL_DISPLAY_NAME)


def ensure_kernel() -> None:
    """Install the kernel into this environment when no Jupyter path has it yet."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        install_kernel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idd_lib.notebook")
    commands = parser.add_subparsers(dest="command", required=True)
    kernel = commands.add_parser("install-kernel", help=f"install the {KERNEL_NAME!r} kernel ({KERNEL_DISPLAY_NAME})")
    kernel.add_argument("--user", action="store_true", help="for every Jupyter of this user, not only this environment's")
    args = parser.parse_args(argv)
    print(f"installed kernel {KERNEL_NAME!r} ({KERNEL_DISPLAY_NAME}, {sys.executable}) in {install_kernel(args.user)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
