"""`python -m deploy` fails the way its --help says: exit 0 / 1 (some inputs failed, the rest printed) /
2 (usage, bundle, out of memory) / 141 (stdout closed), one `error:` sentence that names the argument or
file, and never a traceback."""

import json
import os
import re
import struct
import subprocess
import sys

import pytest

from deploy.runners import OnnxRuntimeRunner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What ONNX Runtime's CPU arena raises when a batch does not fit, word for word.
ORT_ALLOCATION_FAILURE = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
    "Name:'/0/Conv' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 "
    "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, "
    "onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 5138022400")


def deploy_cli(*args, **popen):
    """The real console entry point in a fresh interpreter, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    env.pop("EDGECLS_DEBUG", None)
    command = [sys.executable, "-m", "deploy", *map(str, args)]
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mixed_images(digits_bundle, tmp_path_factory):
    """Two real images (PNG, JPEG) among three bad files, interleaved."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("mixed")
    png = digits_bundle.image_paths[0]
    jpeg = str(folder / "digit.jpg")
    Image.open(digits_bundle.image_paths[1]).convert("RGB").resize((32, 32)).save(jpeg, quality=95)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("meeting notes, not a photo\n")
    bomb = folder / "bomb.png"
    # 182 megapixels, over Pillow's refusal line (2 x 89.5 MP), in a 22 kB 1-bit file
    Image.new("1", (14000, 13000)).save(bomb)
    return {"good": [png, jpeg], "bad": [str(empty), str(text), str(bomb)],
            "order": [str(empty), png, str(text), str(bomb), jpeg]}


def test_infer_prints_every_good_image_names_every_bad_one_and_exits_1(digits_bundle, mixed_images):
    result = deploy_cli("infer", "--bundle", digits_bundle.path, "--batch-size", "2", *mixed_images["order"])
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == mixed_images["good"]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("using ")]  # the chosen file first
    assert [line.split(": ")[1] for line in errors] == mixed_images["bad"]
    assert all(line.startswith("error: ") for line in errors)
    empty, text, bomb = errors
    assert "empty" in empty and "not an image" in text and "pixel" in bomb


def test_a_decoder_exception_of_any_type_costs_only_its_own_file(digits_bundle, run_cli, monkeypatch):
    import deploy.preprocess

    real = deploy.preprocess.read_image
    victim = digits_bundle.image_paths[1]

    def read_image(source, name=None):
        if source == victim:
            raise struct.error("unpack requires a buffer of 4 bytes")  # what a broken TIFF plugin raises
        return real(source, name)

    monkeypatch.setattr(deploy.preprocess, "read_image", read_image)
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, *digits_bundle.image_paths[:3])
    assert code == 1
    assert [json.loads(line)["file"] for line in out.splitlines()] == digits_bundle.image_paths[0:3:2]
    assert err.splitlines() == [f"error: {victim}: cannot be read (error: unpack requires a buffer of 4 bytes)"]


@pytest.mark.parametrize("command, flag, value", [
    ("bench", "--batch", "abc"),
    ("bench", "--batch", "0"),
    ("bench", "--batch", "1,-8"),
    ("bench", "--warmup", "-5"),
    ("bench", "--iterations", "0"),
    ("bench", "--threads", "two"),
    ("infer", "--topk", "0"),
    ("infer", "--batch-size", "-1"),
    ("infer", "--threads", "0"),
])
def test_a_bad_argument_is_one_sentence_naming_it_and_exit_2(digits_bundle, command, flag, value):
    images = [digits_bundle.image_paths[0]] if command == "infer" else []
    result = deploy_cli(command, "--bundle", digits_bundle.path, flag, value, *images)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"python -m deploy {command}: error: argument {flag}: expected ")
    assert last.endswith(f"got {value!r}")


def test_a_missing_bundle_is_one_sentence_and_exit_2(tmp_path):
    result = deploy_cli("infer", "--bundle", tmp_path / "nowhere", tmp_path / "a.png")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(tmp_path / "nowhere") in result.stderr


def test_help_documents_the_exit_codes(capsys):
    from deploy.__main__ import main

    statuses = {"": ["0", "1", "2", "141"], "infer": ["0", "1", "2", "141"], "bench": ["0", "1", "2", "141"],
                "check-tensorrt": ["0", "1", "2", "141"], "install": ["0", "2", "141"], "list": ["0", "2", "141"],
                "rollback": ["0", "2", "141"], "triton": ["0", "2", "141"], "build-engine": ["0", "2", "141"]}
    for command, expected in statuses.items():
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"] if command else ["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        section = text[text.index("exit status:"):]
        assert re.findall(r"^  (\d+) ", section, flags=re.MULTILINE) == expected, command
        if command not in ("", "bench"):  # the soak and bench's skipped artifacts are said where they apply only
            assert "soak" not in section and "bench" not in section, command


def test_help_names_every_command_and_every_option_says_what_it_is():
    import argparse

    from deploy.__main__ import build_parser

    top = deploy_cli("--help")
    assert top.returncode == 0
    description = top.stdout.split("positional arguments:")[0]
    assert "``" not in top.stdout and "edgecls-deploy" in description
    commands = build_parser()._subparsers._group_actions[0].choices
    listed = re.findall(r"^    (\S+)", top.stdout, flags=re.MULTILINE)  # the command list, one name a line
    assert listed == list(commands) and "check-tensorrt" in listed
    for name, command in commands.items():
        bare = [a.option_strings or a.dest for a in command._actions
                if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
        assert not bare, (name, bare)


def test_infer_out_of_memory_names_the_batch_and_a_smaller_one(digits_bundle, run_cli, monkeypatch):
    def no_memory(self, batch):
        raise MemoryError()

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", no_memory)
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, "--runtime", "onnxruntime", "--batch-size", "16",
                             *digits_bundle.image_paths)
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: out of memory running model.onnx at batch size 16; try a smaller one, "
                                "e.g. --batch-size 8"]


def test_bench_out_of_memory_in_onnxruntime_keeps_the_rows_measured_before_it(digits_bundle, run_cli, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    real = OnnxRuntimeRunner._run

    def arena_full_above_4(self, batch):
        if batch.shape[0] > 4:
            raise RuntimeException(ORT_ALLOCATION_FAILURE)
        return real(self, batch)

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", arena_full_above_4)
    code, out, err = run_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--runtime", "onnxruntime",
                             "--batch", "1,4,8,32",
                             "--iterations", "3", "--warmup", "1", "--json", "--no-progress")
    assert code == 2
    assert [row["batch"] for row in json.loads(out)] == [1, 4]
    assert err.splitlines() == ["error: out of memory running model.onnx at batch size 8; try a smaller one, "
                                "e.g. --batch 1,4"]


def test_out_of_memory_at_batch_1_says_to_free_memory(digits_bundle, run_cli, monkeypatch):
    def no_memory(self, batch):
        raise MemoryError()

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", no_memory)
    code, _, err = run_cli("infer", "--bundle", digits_bundle.path, "--runtime", "onnxruntime", "--batch-size", "1",
                         digits_bundle.image_paths[0])
    assert code == 2
    assert err.startswith("error: out of memory running model.onnx at batch size 1; free memory on this device")


def test_bench_at_a_batch_no_machine_can_hold_is_a_sentence_not_a_crash(digits_bundle):
    huge = 2 * 10**14  # its random input alone is ~1e18 bytes, beyond any address space, so it fails at once
    result = deploy_cli("bench", "--bundle", digits_bundle.path, "--format", "onnx", "--batch", f"1,{huge}",
                        "--iterations", "2", "--warmup", "0", "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    caption, header, rule, row = result.stdout.strip().splitlines()
    assert caption.startswith("Measured here on ") and row.split()[:5] == ["model.onnx", "FP32", "ONNX", "Runtime", "1"]
    # stderr: the error, after at most bench's one line on a bf16 run this CPU was not shown to run faster
    notes = [line for line in result.stderr.splitlines() if not line.startswith("OpenVINO bf16 is not offered")]
    assert notes == [f"error: out of memory running model.onnx at batch size {huge}; try a smaller one, e.g. --batch 1"]


def test_an_unexpected_error_is_one_line_unless_edgecls_debug(digits_bundle, run_cli, monkeypatch):
    def broken(self, batch):
        raise RuntimeError("kaput\nsecond line of detail")

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", broken)
    code, out, err = run_cli("infer", "--bundle", digits_bundle.path, "--runtime", "onnxruntime",
                             digits_bundle.image_paths[0])
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert "RuntimeError: kaput" in line and "EDGECLS_DEBUG=1" in line
    monkeypatch.setenv("EDGECLS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaput"):
        run_cli("infer", "--bundle", digits_bundle.path, "--runtime", "onnxruntime", digits_bundle.image_paths[0])


def test_a_file_system_error_is_one_sentence_naming_the_path(digits_bundle, run_cli, tmp_path):
    blocker = tmp_path / "repo"
    blocker.write_text("a file where the model repository folder should go")
    code, _, err = run_cli("triton", "--bundle", digits_bundle.path, "--out", blocker / "inner")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("error: ") and str(blocker) in line


def test_a_runtime_warning_is_one_warning_line(digits_bundle):
    result = deploy_cli("infer", "--bundle", digits_bundle.path, "--providers", "openvino-typo",
                        digits_bundle.image_paths[0])
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("using ")]
    assert line.startswith("warning: ONNX Runtime here has no openvino-typo") and line.endswith("running on CPU")


def test_a_closed_stdout_ends_quietly(digits_bundle):
    # 2000 result lines are far more than a pipe buffer holds, so the writer is certain to hit the closed pipe.
    images = digits_bundle.image_paths[:20] * 100
    child = deploy_cli("infer", "--bundle", digits_bundle.path, "--batch-size", "4", *images,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()  # what `| head -1` does after its line
    err = child.stderr.read()
    child.stderr.close()
    assert child.wait(timeout=300) == 141
    assert json.loads(first)["file"] == images[0]
    assert [line for line in err.splitlines() if not line.startswith("using ")] == []


def test_every_deploy_flag_has_help():
    from deploy.__main__ import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert "check-tensorrt" in commands
    missing = [(name, a.option_strings or a.dest) for name, sub in commands.items() for a in sub._actions
               if not a.help and a.dest != "help"]
    assert missing == []
