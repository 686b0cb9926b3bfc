"""The HF token and the admin key never appear in logs, the UI, API responses or errors;
with an admin key set, retrain/rollback/push need it and prediction does not."""
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
                                "HF_HOME": str(home.parent / "hf")})
    yield app
    app.stop()
    hub.stop()


def assert_no_secret(text: str):
    assert ADMIN_KEY not in text and HF_TOKEN not in text and "SecretToken" not in text


def test_admin_actions_need_the_key_and_never_echo_it(guarded_app):
    client = Client(guarded_app.url, verbose=False)
    label, _ = client.predict(handle_file("assets/examples/horse.png"), api_name="/predict")  # no key needed
    assert label["label"]
    for api_name, args in (("/retrain", [0.9, 1, "wrong-key"]), ("/rollback", ["", "wrong-key"]),
                           ("/push", ["", "wrong-key"]), ("/retrain", [0.9, 1, ""])):
        with pytest.raises(Exception) as info:
            client.predict(*args, api_name=api_name)
        assert "admin key" in str(info.value)
        assert_no_secret(str(info.value))
    with pytest.raises(Exception) as info:  # right key: the Hub refuses the token, plainly
        client.predict("", ADMIN_KEY, api_name="/push")
    assert "token" in str(info.value).lower()
    assert_no_secret(str(info.value))


def test_pages_config_and_logs_hold_no_secret(guarded_app):
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/mcp/schema"):
        response = httpx.get(guarded_app.url + path, timeout=10)
        assert_no_secret(response.text)
    assert_no_secret(guarded_app.log.read_text())
