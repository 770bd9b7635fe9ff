"""`alcm serve` as a user meets it: a real Prefect server with every deployment served, the new-data trigger end to
end (`alcm ingest` → event → retrain run on the landed shard), a run started from the UI in headless Chromium, the
API auth string (on by default) and CSRF, forms refused outside the platform, and Ctrl-C stopping every process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.curate import CurateImagesParams

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
ALCM = str(Path(sys.executable).parent / "alcm")
CHROMIUM = "/usr/lib/chromium/chromium"
#: Where the browser test leaves its screenshot (a test artifact CI keeps with the run).
ARTIFACTS = Path(os.environ.get("ALCM_TEST_ARTIFACTS", ROOT / "data" / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CSRF: dict[tuple[str, str | None], dict[str, str]] = {}


def _csrf(url: str, auth: str | None) -> dict[str, str]:
    """The CSRF headers a client of this server sends with a POST (a token fetched once per server and auth)."""
    if (url, auth) not in _CSRF:
        client = os.urandom(8).hex()
        status, token = _api(url, f"/csrf-token?client={client}", auth=auth)
        if status != 200:
            return {}
        _CSRF[url, auth] = {"Prefect-Csrf-Token": token["token"], "Prefect-Csrf-Client": client}
    return _CSRF[url, auth]


def _api(url: str, path: str, body: dict | None = None, auth: str | None = None, csrf: bool = True
         ) -> tuple[int, object]:  # fmt: skip
    headers = {"Content-Type": "application/json"}
    if body is not None and csrf:
        headers.update(_csrf(url, auth))
    req = urllib.request.Request(f"{url}/api{path}", data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST", headers=headers)  # fmt: skip
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:  # not listening (yet)
        return 0, None


def _wait(what: str, check, timeout: float, every: float = 1.0, sleep=time.sleep):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_serve(raw: Path, work: Path, port: int, *extra: str, auth: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env.pop("PREFECT_API_URL", None)
    if auth:
        env["ALCM_PREFECT_AUTH_STRING"] = auth
    log = open(work.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([ALCM, "serve", "--data-root", str(raw), "--work", str(work), "--port", str(port), *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _served(url: str, auth: str | None = None) -> dict[str, dict]:
    """flow name → deployment, once every flow's deployment exists."""
    status, flows = _api(url, "/flows/filter", {}, auth)
    if status != 200:
        return {}
    names = {f["id"]: f["name"] for f in flows}
    status, deps = _api(url, "/deployments/filter", {}, auth)
    out = {names.get(d["flow_id"]): d for d in deps or []}
    return out if len(out) >= 9 else {}


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`alcm serve` on a 160-row toy image world; retrains run curation only, to keep the test short."""
    from toyworld.images import generate_image_records, write_image_dataset

    tmp = tmp_path_factory.mktemp("serve")
    raw, work = tmp / "raw", tmp / "work"
    write_image_dataset(raw / "images", generate_image_records(5151, 160), rows_per_shard=80)
    work.mkdir()
    port = _free_port()
    # A local sandbox, said explicitly (the browser test then needs no login); auth itself: the test further down.
    proc = _start_serve(raw, work, port, "--mlflow-port", "0", "--retrain-stage", "curate_images", "--debounce-s", "1",
                        "--insecure-no-auth")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deployments = _wait("the served deployments", lambda: _served(url), 180, 2)
        yield {"url": url, "raw": raw, "work": work, "proc": proc, "deployments": deployments, "tmp": tmp}
    finally:
        code = _stop(proc)
    assert code == 0


def _flow_runs(url: str, deployment_id: str) -> list[dict]:
    status, runs = _api(url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
    return runs if status == 200 else []


def test_training_deployments_are_limited_to_one_run_and_retrain_has_its_trigger(served):
    deps = served["deployments"]
    for name, dep in deps.items():
        limit = (dep.get("global_concurrency_limit") or {}).get("limit") or dep.get("concurrency_limit")
        assert limit == (1 if name in ("distill-image", "distill-video", "adapt", "retrain-animatelcm")
                         else None), name  # fmt: skip
        assert dep["name"] == "platform" and not dep.get("schedules"), name
    status, automations = _api(served["url"], "/automations/filter", {})
    assert status == 200
    (auto,) = [a for a in automations if a["name"] == "retrain on new data"]
    assert auto["trigger"]["expect"] == ["alcm.data.landed"]
    assert auto["actions"][0]["deployment_id"] == deps["retrain-animatelcm"]["id"]


def test_a_landed_shard_starts_a_retrain_that_curates_it(served):
    from toyworld.images import generate_image_records, write_image_dataset

    url, raw = served["url"], served["raw"]
    incoming = served["tmp"] / "incoming"
    write_image_dataset(incoming, generate_image_records(6262, 40), rows_per_shard=40)
    shard = incoming / "parquet" / "part-00000.parquet"
    new_name = shard.with_name("part-landed-001.parquet")
    shard.rename(new_name)
    retrain_id = served["deployments"]["retrain-animatelcm"]["id"]
    assert _flow_runs(url, retrain_id) == []  # nothing runs until data lands
    env = {**os.environ, "PREFECT_API_URL": f"{url}/api"}
    out = subprocess.run([ALCM, "ingest", str(new_name), "--kind", "images", "--data-root", str(raw)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    landed = raw / "images" / "parquet" / "part-landed-001.parquet"
    assert landed.is_file() and f"landed {landed}" in out.stdout

    run = _wait("the triggered retrain run to finish",
                lambda: next((r for r in _flow_runs(url, retrain_id) if r["state_type"] in ("COMPLETED", "FAILED",
                                                                                            "CRASHED")), None),
                600, 3)  # fmt: skip
    assert run["state_type"] == "COMPLETED", run["state"]
    params = run["parameters"]["params"]
    assert params["new_data"] == f"images: {landed}"
    assert params["images"] == str(raw / "images" / "parquet") and params["stages"] == ["curate_images"]
    manifest = json.loads((served["work"] / "curated-images" / "manifest.json").read_text())
    assert manifest["counts"]["input"] == 160 + 40  # the run read the landed shard with the two it had
    kept = pq.read_table(served["work"] / "curated-images" / "kept", columns=["key"]).column("key").to_pylist()
    new_keys = set(pq.read_table(landed, columns=["key"]).column("key").to_pylist())
    assert new_keys & set(kept), "some landed rows are in the curated dataset"
    status, artifacts = _api(url, "/artifacts/filter", {"artifacts": {"key": {"any_": ["retrain-summary"]}}})
    assert any(f"started by new data: `images: {landed}`" in (a.get("data") or "") for a in artifacts)


def test_a_run_started_from_the_ui_completes_and_shows_its_reasons_table(served):
    from playwright.sync_api import expect, sync_playwright

    url = served["url"]
    dep = served["deployments"]["curate-images"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "prefect-ui-curate-images-run.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # Abort the UI's analytics host: every URL not under the server's. A regex, matched in the browser: a Python
        # callable would hold *every* request until the sync API next runs (a Playwright call), so the Run dialog's
        # POST stalled for as long as the test polled the API with urllib.
        page.route(re.compile(rf"^(?!{re.escape(url)}/)"), lambda route: route.abort())
        # Find the deployment as a user does: the Deployments page, the curate-images row, its deployment link.
        page.goto(f"{url}/deployments")
        page.locator("tr", has_text="curate-images").get_by_role("link", name="platform").click()
        page.wait_for_url(f"**/deployments/deployment/{dep['id']}**")
        # Run ▸ Quick run opens the form, filled with the deployment's defaults; Run starts it.
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("button", name="Quick run").click()
        expect(page.get_by_text("Run Deployment")).to_be_visible()
        values = page.get_by_role("textbox").evaluate_all("els => els.map(e => e.value)")
        assert str(served["raw"] / "images" / "parquet") in values, values
        before = {r["id"] for r in _flow_runs(url, dep["id"])}
        run_button = page.get_by_role("button", name="Run", exact=True).last
        expect(run_button).to_be_enabled()

        # The run the click created, from the API (the "scheduled to start now" toast is transient). The page's open
        # requests are reported if none comes.
        def started() -> list[dict]:
            return [r for r in _flow_runs(url, dep["id"]) if r["id"] not in before]

        open_requests: dict[str, str] = {}
        page.on("request", lambda r: open_requests.__setitem__(r.url, r.method))
        page.on("requestfinished", lambda r: open_requests.pop(r.url, None))
        page.on("requestfailed", lambda r: open_requests.pop(r.url, None))
        run_button.click()
        try:  # waiting in Playwright calls: the page's events are handled only then
            _wait("the run the UI started", started, 120, 0.5, sleep=lambda s: page.wait_for_timeout(s * 1000))
        except AssertionError as exc:
            page.screenshot(path=str(ARTIFACTS / "prefect-ui-run-not-started.png"), full_page=True)
            raise AssertionError(f"{exc}; the page's open requests: {open_requests}") from exc
        page.wait_for_timeout(2000)  # a second run from one click would have appeared by now
        new = started()
        assert len(new) == 1, [r["name"] for r in new]
        name = new[0]["name"]
        page.get_by_role("link", name=name).first.click(timeout=60_000)  # the deployment page lists the new run
        page.wait_for_url("**/runs/flow-run/**")
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=300_000)
        run_id = page.url.split("/runs/flow-run/")[1].split("?")[0].strip("/")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("curate-images-reasons", exact=True).first.click()
        table = page.get_by_role("table").first
        expect(table).to_be_visible(timeout=30_000)
        status, run = _api(url, f"/flow_runs/{run_id}")
        manifest = json.loads((served["work"] / "ui" / "curate-images" / run["name"] / "manifest.json").read_text())
        top_reason, top_count = max(manifest["counts"]["by_reason"].items(), key=lambda kv: kv[1])
        expect(table).to_contain_text(top_reason)  # the rendered table carries the run's own reasons
        expect(table).to_contain_text(str(top_count))
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert status == 200 and run["name"] == name and run["deployment_id"] == dep["id"]
    assert run["state_type"] == "COMPLETED"
    assert run["parameters"]["params"]["output_dir"].endswith("/ui/curate-images/{run}")
    assert manifest["counts"]["input"] >= 160 and shot.stat().st_size > 10_000


def test_auth_is_on_by_default_with_csrf_ctrl_c_stops_everything_and_no_secret_is_logged(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    (raw / "images" / "parquet").mkdir(parents=True)
    work.mkdir()
    port, mlflow_port = _free_port(), _free_port()
    proc = _start_serve(raw, work, port, "--mlflow-port", str(mlflow_port))  # no auth string given
    url = f"http://127.0.0.1:{port}"
    try:
        generated = _wait("the generated auth string", lambda: (work / "prefect" / "auth-string").is_file(), 60, 1)
        assert generated and (work / "prefect" / "auth-string").stat().st_mode & 0o777 == 0o600
        secret = (work / "prefect" / "auth-string").read_text().strip()
        assert secret.startswith("admin:") and len(secret) > 20
        deps = _wait("the deployments, with the auth string", lambda: _served(url, secret), 180, 2)
        assert "retrain-animatelcm" in deps
        assert _api(url, "/csrf-token?client=probe")[0] == 401  # no auth string: nothing, not even a CSRF token
        assert _api(url, "/csrf-token?client=probe", auth="admin:wrong")[0] == 401
        assert _api(url, "/deployments/filter", {}, secret, csrf=False)[0] == 403  # CSRF: no token, no POST
        assert _api(url, "/health")[0] == 200
        mlflow = _wait("the MLflow UI", lambda: _http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, 2)
        assert mlflow
        # The cluster's way: the same deployments registered with a work pool (a process pool stands in for k8s).
        assert _api(url, "/work_pools/", {"name": "cluster-pool", "type": "process"}, secret)[0] == 201
        env = {**os.environ, "PREFECT_API_URL": f"{url}/api", "PREFECT_API_AUTH_STRING": secret}
        out = subprocess.run([ALCM, "deploy", "--pool", "cluster-pool", "--data-root", str(raw), "--work", str(work)],
                             env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
        assert out.returncode == 0 and "registered 9 deployments with work pool cluster-pool" in out.stdout, out.stderr
        pooled = _served(url, secret)
        assert {d["work_pool_name"] for d in pooled.values()} == {"cluster-pool"}
        assert all("ALCM_FORM_ROOTS" in d["job_variables"]["env"] for d in pooled.values())  # forms checked there too
        assert secret not in out.stdout + out.stderr
    finally:
        code = _stop(proc)
    assert code == 0
    for p in (port, mlflow_port):  # every service is gone with its port
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, p
    logs = [*work.glob("prefect/*.log"), tmp_path / f"serve-{port}.log"]
    assert logs and all(secret not in p.read_text(errors="replace") for p in logs)


@pytest.mark.parametrize(("args", "words"), [
    (["--auth-string", "admin:s3cret"], "visible to every user in process listings"),
    (["--insecure-no-auth", "--host", "0.0.0.0"], "only on a loopback address"),
])  # fmt: skip
def test_serve_refuses_a_secret_on_argv_and_no_auth_off_loopback(tmp_path, args, words):
    (tmp_path / "raw").mkdir()
    out = subprocess.run([ALCM, "serve", "--data-root", str(tmp_path / "raw"), "--work", str(tmp_path / "w"), *args],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and words in out.stderr, out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def test_a_form_reaching_outside_the_platform_fails_before_any_work(served, tmp_path):
    url, dep = served["url"], served["deployments"]["curate-images"]
    defaults = dep["parameters"]["params"]
    outside = tmp_path / "outside-out"
    cases = {
        "output outside the work directory": ({**defaults, "output_dir": str(outside)}, "outside the served work"),
        "an operator-only key": ({**defaults, "overrides": ["ray.address=ray://elsewhere:10001"]}, "ray.address"),
    }
    ids = {}
    for case, (params, _) in cases.items():
        status, run = _api(url, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": params}})
        assert status == 201, case
        ids[case] = run["id"]
    for case, (_, words) in cases.items():
        run = _wait(f"the refused run ({case})", lambda i=ids[case]: (lambda r: r if r and r["state_type"] in (
            "FAILED", "CRASHED", "COMPLETED") else None)(_api(url, f"/flow_runs/{i}")[1]), 300, 2)  # fmt: skip
        assert run["state_type"] == "FAILED", (case, run["state"])
        assert words in (run["state"]["message"] or ""), (case, run["state"]["message"])
    assert not outside.exists()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def test_run_placeholder_in_output_dir_becomes_the_run_name(prefect_harness, tmp_path):
    from prefect import flow

    from flows.record import with_run_name

    @flow(flow_run_name="bright-run")
    def probe(p: CurateImagesParams) -> str:
        return with_run_name(p).output_dir

    assert probe(CurateImagesParams(input_dir="in", output_dir=str(tmp_path / "ui" / "{run}"))) == str(
        tmp_path / "ui" / "bright-run"
    )
    fixed = CurateImagesParams(input_dir="in", output_dir=str(tmp_path / "fixed"))
    assert with_run_name(fixed) is fixed
