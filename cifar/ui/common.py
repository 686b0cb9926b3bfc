"""What the tabs share: turning a user's mistake into a message, the version pickers, and the
cache of drawn plots."""
import functools

import gradio as gr
import pandas as pd
from pandas.io.formats.style import Styler

from .. import config, evaluate
from ..service import Service, UserError

ASSETS = config.ROOT / "assets"


def shown(fn):
    """Turn the errors a user can cause into a readable message (no stack trace)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def as_percent(frame: pd.DataFrame, columns: list[str], rows: list[int] | None = None) -> Styler:
    """`frame` as a Dataframe shows it, with `columns` (in `rows`, else every row) in percent ("90.35%",
    not "0.9035"; "100.00%", not "1"). Gradio shows a Styler's formatted values; API callers still
    get the numbers."""
    where = pd.IndexSlice[rows if rows is not None else slice(None), columns]
    return frame.style.hide(axis="index").format(str, na_rep="").format("{:.2%}", subset=where, na_rep="-")


VERSION_COLUMNS = ["version", "current", "kind", "parent", "accuracy", "evaluated on", "train s"]


def versions_table(service: Service) -> Styler:
    """One row a version, newest first: id, current, kind, parent, accuracy, images, train s."""
    current = service.registry.current().id
    rows = []
    for version in reversed(service.registry.list()):
        meta, metrics = version.metadata, version.metrics
        accuracy = metrics.get("accuracy")
        rows.append([version.id, "yes" if version.id == current else "", meta.get("kind", ""),
                     meta.get("parent") or "", round(accuracy, 4) if accuracy is not None else None,
                     metrics.get("count"), meta.get("train_seconds")])
    return as_percent(pd.DataFrame(rows, columns=VERSION_COLUMNS, dtype=object), ["accuracy"])


def version_choices(service: Service) -> list[str]:
    """Version ids, newest first, for the dropdowns."""
    return [v.id for v in reversed(service.registry.list())]


def versions_update(service: Service) -> tuple:
    """The versions table and the two dropdowns that pick a version, refreshed."""
    choices = version_choices(service)
    return versions_table(service), gr.update(choices=choices), gr.update(choices=choices)


def cached_plot(key: str, name: str, draw) -> str:
    """A PNG drawn once and kept under the plots folder, `key`/`name`.png: versions never change,
    and drawing costs ~0.3 s of CPU. `draw` returns a matplotlib figure."""
    path = config.plots_dir() / key / f"{name}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp.png")
        evaluate.save_png(draw(), partial)
        partial.replace(path)
    return str(path)
