"""The app's Gradio sessions build component configs only when something reads them."""
from gradio import state_holder

from cifar.service import Service
from cifar.ui import build, sessions as gradio_sessions


def test_a_new_session_builds_no_configs_until_read_and_then_the_same_ones():
    demo = build(Service())
    gradio_sessions.install()
    gradio_sessions.install()  # twice: still one wrapper
    init = state_holder.SessionState.__init__
    assert init.lazy_configs and not getattr(init.__wrapped__, "lazy_configs", False)

    lazy = state_holder.SessionState(demo)
    assert dict.__len__(lazy.config_values) == 0 and len(lazy.config_values) > 50  # none built, all known
    eager = state_holder.SessionState.__new__(state_holder.SessionState)
    init.__wrapped__(eager, demo)  # Gradio's own constructor: every config up front
    assert dict(lazy.config_values.items()) == eager.config_values  # a deep link reads the same configs
    assert list(lazy.components) == list(eager.components)

    block_id = next(k for k, c in eager.config_values.items() if "value" in c.get("props", {}))
    fresh = state_holder.SessionState(demo)
    fresh._update_value_in_config(block_id, "changed")  # Gradio's per-session update still lands
    assert fresh.config_values[block_id]["props"]["value"] == "changed"
    assert dict.__len__(fresh.config_values) == 1
