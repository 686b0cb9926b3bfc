"""The versions panel (in the Retrain tab): every version, which one is current, roll back, push."""
from typing import NamedTuple

import gradio as gr

from ..service import Service
from .common import VERSION_COLUMNS, shown, version_choices, versions_table, versions_update


class Panel(NamedTuple):
    table: gr.Dataframe
    picker: gr.Dropdown
    rollback: gr.Button
    push: gr.Button
    refresh: gr.Button
    message: gr.Markdown


def panel(service: Service) -> Panel:
    table = gr.Dataframe(versions_table(service), headers=VERSION_COLUMNS, label="Versions", elem_id="versions-table")
    with gr.Row():
        picker = gr.Dropdown(version_choices(service), label="Version", allow_custom_value=True)
        rollback = gr.Button("Roll back / make current")
        push = gr.Button("Push to the Hub")
        refresh = gr.Button("Refresh list")
    return Panel(table, picker, rollback, push, refresh, gr.Markdown(label="Message"))


def wire(service: Service, versions: Panel, admin_key: gr.Textbox, metrics_picker: gr.Dropdown) -> None:
    """The panel's buttons; a change of the current version also refreshes the Metrics tab's picker."""
    @shown
    def rollback(version_id, key):
        """Make a version current ("" for the one that served before the current one); returns the
        message and the versions table."""
        return (service.rollback(version_id or None, key), *versions_update(service))

    @shown
    def push(version_id, key):
        """Push a version ("" for the current one) to the Hub repository HF_REPO_ID, tagged with its id."""
        return service.push(version_id or None, key)

    versions.rollback.click(rollback, [versions.picker, admin_key],
                            [versions.message, versions.table, versions.picker, metrics_picker], api_name="rollback")
    versions.push.click(push, [versions.picker, admin_key], versions.message, api_name="push")
    def list_versions():
        """Every version, newest first: id, current, kind, parent, accuracy, images evaluated on, train s."""
        return versions_table(service)

    versions.refresh.click(list_versions, None, versions.table, api_name="versions")
