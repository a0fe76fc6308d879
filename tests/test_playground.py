"""The playground page (GET /) in a real headless Chromium against a real serve.py: it says what it
serves, types a prompt, presses Generate, watches the text stream in and finish, and puts the
server's refusals (401, 400, 503 when busy) into words. Needs Debian's chromium and
chromium-driver (`make test` installs them where it can) and selenium; skipped, saying which is
missing, elsewhere."""
import json
import shutil
import threading
import time
import urllib.request

import pytest

from test_serve import LiveServer
from test_serve_hostile import long_ckpt, send  # noqa: F401  (a model that never stops early)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium "
                "chromium-driver; `make test` tries)", allow_module_level=True)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # as root in a sandbox, without a screen or a network: no sandbox, no GPU, no background calls
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def status_text(browser):
    return browser.find_element(By.ID, "status").text


def wait_for_status(browser, words, timeout=120):
    WebDriverWait(browser, timeout).until(lambda b: words in status_text(b))
    return status_text(browser)


def set_field(browser, element_id, value):
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def test_generate_streams_and_errors_are_put_in_words(browser, ckpt, tmp_path):
    server = LiveServer(tmp_path / "serve.log", f"--ckpt={ckpt}", "--api_key=secret",
                        "--model_name=tiny-test")
    try:
        browser.get(server.url + "/")
        about = WebDriverWait(browser, 60).until(
            lambda b: "context" in b.find_element(By.ID, "about").text and
            b.find_element(By.ID, "about").text)
        health = json.loads(send(server.url, "GET", "/health")[1])
        assert about.startswith("tiny-test: ") and f"context {health['block_size']} tokens" in about
        assert browser.title == "tiny-test"

        set_field(browser, "prompt", "The old town")
        browser.find_element(By.ID, "go").click()  # no key yet
        words = wait_for_status(browser, "HTTP 401")
        assert "needs an API key" in words and "missing or wrong API key" in words

        set_field(browser, "key", "secret")
        set_field(browser, "temp", "5")
        browser.find_element(By.ID, "go").click()
        words = wait_for_status(browser, "HTTP 400")
        assert "refused" in words and "'temperature' must be a number in 0..2" in words

        set_field(browser, "temp", "0")
        set_field(browser, "max", "12")
        browser.find_element(By.ID, "go").click()
        words = wait_for_status(browser, "finished")
        text = browser.find_element(By.ID, "out").get_attribute("textContent")
        expected = json.loads(send(server.url, "POST", "/v1/completions", json.dumps(
            {"prompt": "The old town", "max_tokens": 12, "temperature": 0, "top_p": 0.95}).encode(),
            {"Content-Type": "application/json", "Authorization": "Bearer secret"})[1])
        assert text == expected["choices"][0]["text"] and text  # the streamed pieces, all of them
    finally:
        server.stop()


def test_text_arrives_in_pieces_and_a_busy_server_says_so(browser, long_ckpt, tmp_path):
    """One batch row and one waiting place: a long request holds the row, a second waits, and the
    page's request is turned away with 503. Then the page streams 300 tokens itself: the text is
    seen growing before the status says it finished."""
    server = LiveServer(tmp_path / "serve.log", f"--ckpt={long_ckpt}", "--max_batch=1",
                        "--max_waiting=1")
    try:
        browser.get(server.url + "/")
        body = json.dumps({"prompt": "The", "max_tokens": 1000, "temperature": 0, "stream": True})
        holders = [urllib.request.urlopen(urllib.request.Request(
            server.url + "/v1/completions", data=body.encode(), method="POST",
            headers={"Content-Type": "application/json"}), timeout=120)]
        holders[0].read(10)  # the first one is decoding: it holds the only row
        waiting = threading.Thread(target=lambda: send(server.url, "POST", "/v1/completions",
                                                       body.encode(), {"Content-Type": "application/json"}),
                                   daemon=True)
        waiting.start()
        deadline = time.time() + 60
        while "mini_lm_waiting_requests 1.0" not in send(server.url, "GET", "/metrics")[1].decode():
            assert time.time() < deadline, "the second request never started waiting"
            time.sleep(0.05)
        browser.find_element(By.ID, "go").click()
        words = wait_for_status(browser, "HTTP 503")
        assert "busy" in words and "retry after 1 s" in words
        holders[0].close()  # the client goes away: the server frees the row and the waiting one runs
        waiting.join(timeout=280)

        set_field(browser, "max", "300")
        set_field(browser, "temp", "0")
        browser.find_element(By.ID, "go").click()
        lengths = set()
        deadline = time.time() + 300
        while "finished" not in status_text(browser):
            assert time.time() < deadline and "HTTP" not in status_text(browser), status_text(browser)
            lengths.add(len(browser.find_element(By.ID, "out").get_attribute("textContent")))
            time.sleep(0.02)
        assert "reached max tokens" in status_text(browser)
        final = len(browser.find_element(By.ID, "out").get_attribute("textContent"))
        assert len({n for n in lengths if 0 < n < final}) >= 2, lengths  # seen growing, in pieces
    finally:
        server.stop()
