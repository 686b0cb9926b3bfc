"""The HF token and the admin key never appear in logs, the UI, API responses or errors;
with an admin key set, retrain/rollback/push/review need it and prediction does not. The app here
also serves MCP, whose schema is checked too."""
import shutil

import httpx
import pytest
from conftest import AppProcess
from gradio_client import Client, handle_file
from hub_server import HubServer

ADMIN_KEY = "admin-Key-5ecret-7731"
HF_TOKEN = "hf_SecretToken0123456789abcdef"


@pytest.fixture(scope="module")
def guarded_app(tmp_path_factory):
    hub = HubServer(token="a-different-token").start()  # the app's token will be refused
    home = tmp_path_factory.mktemp("guarded") / "home"
    app = AppProcess(home, env={"CIFAR_ADMIN_KEY": ADMIN_KEY, "HF_TOKEN": HF_TOKEN, "HF_REPO_ID": "team/cifar",
                                "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
                                "HF_HOME": str(home.parent / "hf"), "GRADIO_MCP_SERVER": "true"})
    yield app
    app.stop()
    hub.stop()


def assert_no_secret(text: str):
    assert ADMIN_KEY not in text and HF_TOKEN not in text and "SecretToken" not in text


def test_admin_actions_need_the_key_and_never_echo_it(guarded_app, tmp_path):
    client = Client(guarded_app.url, verbose=False)
    label, _ = client.predict(handle_file("assets/examples/horse.png"), api_name="/predict")  # no key needed
    assert label["label"]
    for api_name, args in (("/retrain", [0.9, 1, "wrong-key"]), ("/rollback", ["", "wrong-key"]),
                           ("/push", ["", "wrong-key"]), ("/retrain", [0.9, 1, ""])):
        with pytest.raises(Exception) as info:
            client.predict(*args, api_name=api_name)
        assert "admin key" in str(info.value)
        assert_no_secret(str(info.value))
    # Review needs the key too: the queue shows uploads, a label changes what the next retrain learns.
    for n, name in enumerate(("cat", "dog", "ship")):  # plain names: unlabeled, so in the review queue
        shutil.copy(f"assets/examples/{name}.png", tmp_path / f"photo{n}.png")
    client.predict([handle_file(str(tmp_path / f"photo{n}.png")) for n in range(3)], api_name="/upload")
    for api_name, args in (("/review_queue", [5, "", "wrong-key"]), ("/label", ["0" * 40, "dog", ""])):
        with pytest.raises(Exception, match="admin key"):
            client.predict(*args, api_name=api_name)
    queue = client.predict(5, "", ADMIN_KEY, api_name="/review_queue")
    assert len(queue) == 3
    saved = client.predict(queue[0]["id"], "dog", ADMIN_KEY, api_name="/label")
    assert saved["label"] == "dog" and saved["id"] == queue[0]["id"]
    assert queue[0]["id"] not in [i["id"] for i in client.predict(5, "", ADMIN_KEY, api_name="/review_queue")]
    with pytest.raises(Exception) as info:  # right key: the Hub refuses the token, plainly
        client.predict("", ADMIN_KEY, api_name="/push")
    assert "token" in str(info.value).lower()
    assert_no_secret(str(info.value))


def test_mcp_serves_every_endpoint_as_a_tool_and_its_admin_actions_need_the_key(guarded_app):
    schema = httpx.get(guarded_app.url + "/gradio_api/mcp/schema", timeout=10)
    assert schema.status_code == 200
    tools = {tool["name"]: tool for tool in schema.json()}
    endpoints = Client(guarded_app.url, verbose=False).view_api(return_format="dict", print_info=False)
    # One tool an endpoint, named as it is, each saying what it does (an agent picks tools by these).
    assert {"predict", "retrain", "retrain_start", "retrain_status", "rollback", "label"} <= set(tools), sorted(tools)
    assert len(tools) == len(endpoints["named_endpoints"])
    assert all(len(tool["description"]) > 30 for tool in tools.values()), {n: t["description"] for n, t in tools.items()}
    assert "key" in str(tools["retrain_start"]["inputSchema"]["properties"])   # the admin key is an input


def test_pages_config_and_logs_hold_no_secret(guarded_app):
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/mcp/schema"):
        response = httpx.get(guarded_app.url + path, timeout=10)
        assert_no_secret(response.text)
    assert_no_secret(guarded_app.log.read_text())
