import numpy as np
import pytest

from condnet.deploy.serve import create_app
from condnet.deploy.serve_test import DOCUMENTS, SIZE, _expected, _expected_documents, _png
from condnet.deploy.serve_test import model as model  # noqa: F401  (the fixture)
from condnet.deploy.serve_test import text_model as text_model  # noqa: F401  (the fixture)
from condnet.testing import headless_chromium, serve_in_thread

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def serve(model):  # noqa: F811
    """Start an app on a free loopback port in a thread; yields a function of the app."""
    servers = []

    def start(app):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        server, thread = serve_in_thread(config)
        servers.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def _text(browser, element_id, shows="", seconds=30):
    """The element's text once it is not empty and holds `shows` (the browser's own
    wait for a condition; `seconds` is a safety net)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(browser):
        text = browser.find_element(By.ID, element_id).text.strip()
        return text if text and shows in text else False

    return WebDriverWait(browser, seconds).until(shown)


def _upload(browser, path):
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false;", field)
    field.send_keys(str(path))


def test_the_page_shows_group_class_expert_and_the_gate_probabilities(
    model,  # noqa: F811
    serve,
    browser,
    tmp_path,
):
    from selenium.webdriver.common.by import By

    url = serve(create_app(model, SIZE))
    browser.get(url + "/")
    assert "round" in _text(browser, "model") and "routing: hard" in _text(browser, "model")
    data = _png(11)
    (tmp_path / "photo.png").write_bytes(data)
    _upload(browser, tmp_path / "photo.png")
    shown = _text(browser, "path")
    expected = _expected(model, data)
    assert shown.startswith(f"{expected['group']} \u2192 {expected['class']}")
    assert f"expert {expected['expert']}" in shown
    bars = browser.find_elements(By.CSS_SELECTOR, "#result .bar")
    assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == model.hierarchy.groups
    values = [float(b.find_element(By.CLASS_NAME, "value").text) for b in bars]
    np.testing.assert_allclose(
        values, [expected["group_probabilities"][g] for g in model.hierarchy.groups], atol=1e-3
    )


def test_the_page_asks_for_the_token_and_shows_errors(model, serve, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    url = serve(create_app(model, SIZE, token="s3cret"))
    browser.get(url + "/")
    assert "needs a token" in _text(browser, "model")
    browser.find_element(By.ID, "token").send_keys("s3cret")
    browser.find_element(By.ID, "use-token").click()
    _text(browser, "model", shows="Groups:")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    _upload(browser, tmp_path / "broken.png")
    assert _text(browser, "error").startswith("Error 400")


def test_the_page_of_a_text_model_takes_pasted_text(text_model, serve, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = serve(create_app(text_model))
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: "reads text" in b.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "drop").is_displayed()
    browser.find_element(By.ID, "text").send_keys(DOCUMENTS[2])
    browser.find_element(By.ID, "send-text").click()
    shown = _text(browser, "path")
    (expected,) = _expected_documents(text_model, DOCUMENTS[2:3])
    assert shown.startswith(f"{expected['group']} \u2192 {expected['class']}")
    assert f"expert {expected['expert']}" in shown
    browser.find_element(By.ID, "text").clear()
    browser.find_element(By.ID, "send-text").click()
    assert _text(browser, "error").startswith("Error 400")  # a blank document
