"""What a person sees comparing runs in TensorBoard: the HPARAMS tab as a leaderboard (the settings they varied,
best and test top-1, the bundle's numbers), rendered by the real TensorBoard in headless Chromium."""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from edgecls_testing import EXPERIMENTS, NO_FIT_END, TINY, run_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


pytestmark = pytest.mark.slow  # two fits, a TensorBoard server and Chromium

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two quickstart runs that differ in lr and epochs; the first goes through the fit-end chain to its bundle."""
    cwd = tmp_path_factory.mktemp("runs")
    quickstart = str(EXPERIMENTS / "quickstart.yaml")
    run_main(["fit", "--config", quickstart, *TINY, "--trainer.max_epochs", "1", "--model.optimizer.lr", "0.01"], cwd, timeout=400)
    run_main(["fit", "--config", quickstart, *TINY, *NO_FIT_END, "--trainer.max_epochs", "2", "--model.optimizer.lr", "0.003"], cwd)
    return cwd / "runs"


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_data(acc: EventAccumulator, kind: str):
    return getattr(plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")[f"_hparams_/{kind}"]), kind)


def test_hparams_are_the_settings_a_person_varies_under_readable_names(two_runs):
    acc = events(two_runs / "quickstart" / "version_0")
    start = hparams_data(acc, "session_start_info")
    values = dict(start.hparams)
    assert values["lr"].string_value == "0.01" and values["max_epochs"].string_value == "1"
    assert values["backbone"].string_value == "resnet" and values["backbone.width"].string_value == "4"
    assert values["precision"].string_value == "32-true" and values["strategy"].string_value == "single_device"
    assert values["data"].string_value == "digits" and values["batch_size"].string_value == "64"  # a count, shown as 64 not 64.000
    assert values["seed"].string_value == "42" and values["devices"].string_value == "1"
    shown = " ".join([*values, *(v.string_value for v in values.values())])
    assert "class_path" not in shown and "_instantiator" not in shown and "lightning_modules." not in shown
    assert start.group_name == "quickstart v0"  # the trial name, short enough for its 10em column

    experiment = hparams_data(acc, "experiment")
    # TensorBoard shows the first five declared settings before any metric: only the two runs are compared by
    assert [h.name for h in experiment.hparam_infos] == ["lr", "max_epochs"]
    assert [(m.name.tag, m.display_name) for m in experiment.metric_infos][:4] == [  # the most wanted first
        ("2 test/top1", "test top-1 (0-1)"), ("bundle/int8_delta_top1_pt", "INT8 Δtop-1 pt"),
        ("bundle/cpu_latency_ms", "CPU ms"), ("bundle/size_mb", "bundle MB")]
    assert hparams_data(acc, "session_end_info").status == api_pb2.STATUS_SUCCESS


def test_every_leaderboard_metric_has_a_value_and_none_is_a_placeholder(two_runs):
    acc = events(two_runs / "quickstart" / "version_0")
    tags = [m.name.tag for m in hparams_data(acc, "experiment").metric_infos]
    scalars = acc.Tags()["scalars"]
    assert set(tags) <= set(scalars), set(tags) - set(scalars)  # the bundle run has every column
    bundle = json.loads((two_runs / "quickstart" / "version_0" / "bundle" / "report.json").read_text())
    # each INT8 file as the runtime it is for scores it; the same file in OpenVINO is a row of the table, not this
    int8 = [r for r in bundle["rows"] if r["precision"] == "int8" and r["runtime"] == "onnxruntime"]
    assert len(int8) == 2 and any(r.get("other_runtime") for r in bundle["rows"] if r["precision"] == "int8")
    assert acc.Scalars("bundle/int8_delta_top1_pt")[-1].value == pytest.approx(min(r["delta_pts"] for r in int8))
    assert acc.Scalars("bundle/params")[-1].value == bundle["params"] > 1000
    # TIME SERIES draws a lone point as an empty chart: each bundle number is a flat line over the run's steps
    last_step = max(e.step for t in scalars if not t.startswith("bundle/") for e in acc.Scalars(t))
    for tag in (t for t in scalars if t.startswith("bundle/")):
        points = acc.Scalars(tag)
        assert len(points) == 2 and points[0].step == 0 and points[1].step >= last_step > 0, (tag, points)
        assert points[0].value == points[1].value, (tag, points)

    trained = events(two_runs / "quickstart" / "version_1")
    best = trained.Scalars("1 val/top1_best")
    # one value per finished epoch, none before the first (a 0.0 there would be a failed run's "best")
    assert len(best) == 2 and best[0].step > 0 and best[-1].value == max(e.value for e in trained.Scalars("1 val/top1"))
    assert not any(t.startswith("bundle/") for t in trained.Tags()["scalars"])  # no bundle: empty cells, not zeros


# --- the page itself ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_text(url: str, wait_for: str, timeout: float = 60.0, measure: str = "", height: int = 1000):
    """The rendered text of `url` in a 1600 px wide window, shadow roots included (TensorBoard's dashboards live in
    them, so --dump-dom misses them), read through the DevTools protocol over a pipe: no websocket client needed.
    With `measure` (a JavaScript expression), returns (text, its value) instead."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def fds():  # Chromium reads commands on fd 3 and answers on fd 4 (via high numbers: the pipes may be 3 or 4)
        os.dup2(to_child_r, 100), os.dup2(from_child_w, 101)
        os.dup2(100, 3), os.dup2(101, 4)

    with TemporaryProfile() as profile:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--window-size=1600,{height}", "--remote-debugging-pipe", url],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r), os.close(from_child_w)
        reader = os.fdopen(from_child_r, "rb")
        writer = os.fdopen(to_child_w, "wb")
        ids = iter(range(1, 10**6))

        def call(method, session=None, **params):
            msg_id = next(ids)
            msg = {"id": msg_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
            writer.write(json.dumps(msg).encode() + b"\0")
            writer.flush()
            buffer = b""
            while True:
                chunk = reader.read1(65536)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                buffer += chunk
                *done, buffer = buffer.split(b"\0")
                for raw in done:
                    reply = json.loads(raw)
                    if reply.get("id") == msg_id:
                        return reply.get("result", {})

        try:
            deadline = time.monotonic() + timeout
            page = next(t for t in call("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            walk = ("(function text(n){if(n.nodeName==='STYLE'||n.nodeName==='SCRIPT')return '';"
                    "let s=n.shadowRoot?text(n.shadowRoot):'';"
                    "for(const c of n.childNodes){s+=c.nodeType===3?c.textContent+' ':text(c);}return s;})(document)")
            text = ""
            while time.monotonic() < deadline:
                text = call("Runtime.evaluate", session, expression=walk, returnByValue=True)["result"].get("value", "")
                if wait_for in text:
                    time.sleep(2)  # the table fills row by row
                    text = " ".join(call("Runtime.evaluate", session, expression=walk, returnByValue=True)["result"]["value"].split())
                    if not measure:
                        return text
                    return text, call("Runtime.evaluate", session, expression=measure, returnByValue=True)["result"].get("value")
                time.sleep(1)
            return " ".join(text.split())
        finally:
            proc.kill()
            proc.wait()
            reader.close(), writer.close()


class TemporaryProfile:
    def __enter__(self):
        import tempfile

        self.path = tempfile.mkdtemp(prefix="chromium-profile-")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def board(two_runs):
    """The real TensorBoard serving the two runs; yields its address."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(two_runs), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


# [text, left, right] of every column header of the HPARAMS table, in px of the 1600 px window
HEADERS = ("(function walk(n,out){if(n.nodeType===1&&n.classList.contains('table-header')){const r=n.getBoundingClientRect();"
           "out.push([n.textContent.trim(),r.left,r.right]);}if(n.shadowRoot)walk(n.shadowRoot,out);"
           "for(const c of n.children||[])walk(c,out);return out;})(document,[])")


@needs_chromium
def test_the_hparams_tab_shows_lr_epochs_top1_and_the_bundle_numbers_on_a_1600_px_screen(two_runs, board):
    text, headers = page_text(f"{board}/#hparams", wait_for="quickstart v1", measure=HEADERS)
    table = text[text.index("Trial ID"):]
    for version in (0, 1):
        best = events(two_runs / "quickstart" / f"version_{version}").Scalars("1 val/top1_best")[-1].value
        row = table[table.index(f"quickstart v{version}"):]
        shown = f"{best:.{4 - math.floor(math.log10(best))}f}"  # as the table shows it: 5 significant digits
        assert shown in row[:400], (version, shown, row[:400])
        lr = ("0.01", "0.003")[version]  # as the command line gave it, not to 5 significant digits (0.0030000)
        assert row.split()[2] == lr, (version, row[:400])
    right_edge = {title: right for title, left, right in headers if right > left}
    wanted = ["Trial ID", "lr", "max_epochs", "test top-1 (0-1)", "INT8 Δtop-1 pt", "CPU ms", "bundle MB"]
    assert [title for title in right_edge if title in wanted] == wanted, headers  # in this order, left to right
    assert max(right_edge[title] for title in wanted) <= 1600, headers  # whole, without scrolling


@needs_chromium
def test_the_time_series_tab_opens_on_val_and_test_then_train_and_ends_with_the_gradient_norms(board):
    text = page_text(f"{board}/#timeseries", wait_for="weights", height=5000)  # every section's cards in view
    # section headers as the tab lists them, top to bottom ("<name> <N> cards"; a one-card section has no count)
    sections = [name for name, _ in re.findall(r"((?:\d )?[a-z]+) (\d+) cards", text)]
    assert sections == ["1 val", "2 test", "3 train", "bundle", "data", "weights"], sections
    # the first two sections open expanded: their charts are on the page (titled "<section> /<tag>"), the others' not
    assert " 1 val /top1 " in text and " 2 test /top1 " in text and " 3 train /top1 " not in text, text
    # within a section cards go by name: val's first row holds the curves, the best and the confusion matrix after
    cards = list(dict.fromkeys(re.findall(r" 1 val /(\S+) ", text)))
    assert cards[:3] == ["f1", "loss", "top1"] and {"top1_best", "top1_confusion"} <= set(cards[3:]), cards
    assert "grad_2.0" not in text and "lr-AdamW" not in text and " epoch " not in text  # Lightning's own names are gone


def test_the_bundle_picture_labels_every_artifact_with_its_accuracy_latency_and_size():
    from callbacks.report import figure

    rows = [{"label": "PyTorch FP32", "top1": 0.98, "latency_ms": 1.9, "size_mb": 0.30, "delta_pts": 0.0},
            {"label": "ONNX FP32", "top1": 0.98, "latency_ms": 0.21, "size_mb": 0.28, "delta_pts": 0.0},
            {"label": "ONNX INT8", "top1": 0.9733, "latency_ms": 0.12, "size_mb": 0.09, "delta_pts": -0.67}]
    fig = figure({"name": "quickstart", "device": "CPU x (2 cores)", "test_samples": 359, "rows": rows})
    points, sizes = fig.axes
    assert [t.get_text() for t in points.texts] == ["1", "2", "3"]  # each point numbered as its row beside it
    assert [t.get_text() for t in sizes.get_yticklabels()] == [
        "1  PyTorch FP32\n98.00 % (ref), 1.90 ms", "2  ONNX FP32\n98.00 % (+0.00), 0.21 ms",
        "3  ONNX INT8\n97.33 % (-0.67), 0.12 ms"]
    assert [t.get_text() for t in sizes.texts] == [" 0.30 MB", " 0.28 MB", " 0.09 MB"]
    assert points.get_lines()[0].get_ydata()[0] == 98.0  # the FP32 reference line


def test_the_labels_of_neighbouring_groups_of_equal_points_do_not_print_into_each_other():
    """Eight rows at one top-1 (a small folder's test split), in two clusters half a decade of latency apart: one
    label per cluster ("4, 6, 7" and "2, 3, 5"), and the two labels' boxes do not overlap on the rendered figure."""
    from callbacks.report import figure

    latencies = [4.25, 1.25, 1.21, 0.68, 1.50, 0.47, 0.64, 0.31]
    rows = [{"label": f"row {i}", "top1": 0.3889, "latency_ms": ms, "size_mb": 1.0, "delta_pts": 0.0}
            for i, ms in enumerate(latencies)]
    fig = figure({"name": "folder", "device": "CPU x (2 cores)", "test_samples": 36, "rows": rows})
    points = fig.axes[0]
    labels = [t for t in points.texts if "," in t.get_text()]
    assert sorted(t.get_text() for t in labels) == ["2, 3, 5", "4, 6, 7"], [t.get_text() for t in points.texts]
    fig.canvas.draw()
    first, second = (t.get_bbox_patch().get_window_extent() for t in labels)
    assert not first.overlaps(second), (first, second)


def test_hparams_trial_names_group_by_experiment_and_fit_their_column():
    """HPARAMS cut `v0 imagefolder_...` and sorted runs of different experiments between each other: the experiment
    comes first, one cut for every version, within the 15 characters the trial column shows."""
    from types import SimpleNamespace

    from training.leaderboard import TRIAL_NAME_CHARS, trial_name

    names = [trial_name(SimpleNamespace(name=e, version=v)) for e in ("imagefolder_scratch", "imagefolder_gpu", "quickstart")
             for v in (0, 2, 11)]
    assert all(len(n) <= TRIAL_NAME_CHARS for n in names), names
    assert names[:3] == ["image…ratch v0", "image…ratch v2", "image…ratch v11"] and names[6] == "quickstart v0"
    ordered = sorted(names)
    assert [n.rsplit(" ", 1)[0] for n in ordered] == sorted(n.rsplit(" ", 1)[0] for n in names)  # grouped
