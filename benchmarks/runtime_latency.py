"""MobileNetV2 at 224 on the CPU: torch eager, ONNX Runtime FP32 / INT8 in TensorRT's form / INT8 in the CPU
form, OpenVINO FP32 (f32, exact) / bf16 (where the CPU has it) / INT8 (the CPU-form file), and OpenVINO's own IR
(FP32, and INT8 by NNCF's nncf.quantize as callbacks.OpenVinoIR makes it), batch 1 and 32.

    python benchmarks/runtime_latency.py [--quick] [--iterations 300] [--rounds 15] [--threads N]
                                         [--extra-seconds 60] [--bundle runs/quickstart/version_0/bundle ...]

Random weights are enough for latency (it does not depend on the values), and calibration runs on synthetic
batches (the same ones for ONNX Runtime's quantize_static and for NNCF). Every runner, torch included, uses the same thread count (default: the physical cores this process may
use) and is timed by the same deploy.benchmark.measure the CLI's `bench` uses, interleaved in rounds (A B C ...,
B C A ..., rotated each round): the table prints each row's pooled p50 and the spread of its per-round p50s.
OpenVINO's two performance hints are measured both ways (latency vs throughput at batch 1 and at 32); v1 rows
run OpenVINO's requests with start_async + wait, and each --openvino-variant adds rows under further properties.

Below the table, the targets. The speed ones (batch 1: ONNX Runtime FP32 >= 2x torch eager; best CPU path >= 10x
torch eager and >= 2.5x ONNX Runtime FP32; OpenVINO FP32 <= ONNX Runtime FP32; CPU INT8 >= 1.5x FP32 in the same
runtime) are judged on paired rounds: each round gives one ratio of two rows' p50s, measured moments apart, so
load on a shared machine largely cancels; the verdict is on a distribution-free interval (--confidence) of
their median: met when it clears the goal, NOT met when it lies wholly on the wrong side, undecided (noisy)
otherwise. While one is undecided, rounds are added (--step at a time, up to --max-rounds or --extra-seconds).
The best CPU path is also judged against NNCF's OpenVINO INT8 IR, the peer's own path, at batch 1 and 32 (met
outright where the best path is that IR: the bundle ships it). A target that rests on an instruction this CPU
lacks (VNNI for the INT8 ones) prints "not judged on this CPU: no ..." instead of a verdict. Contention
(--contention-rounds): ONNX Runtime FP32 with its threads spinning and sleeping (deploy's default) and the best
CPU path, each round measured once quiet and once beside a process burning one core, alternately; target: the
default settings contended <= 2x quiet. Then the file sizes (INT8 files <= 27 % of FP32), with --bundle the
bundle's bf16 row within 0.3 pt of its FP32 top-1, the overhead `measure` adds over a bare loop, resident memory
growth over --leak-iterations calls, and a summary line. OpenVINO rows need the openvino extra (and nncf for the
IR rows). --quick: a smoke run.
"""

from __future__ import annotations

import argparse
import os
import sys
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from callbacks.bundle import TorchRunner  # noqa: E402
from callbacks.onnx_export import export_onnx  # noqa: E402
from callbacks import Int8Quantization  # noqa: E402
from callbacks.quantization import prepare_for_quantization, quantize_int8, quantize_static_int8  # noqa: E402
from deploy.benchmark import measure, ratio_verdict  # noqa: E402
from deploy.selection import cpu_model  # noqa: E402
from deploy.cpu_features import cpu_flags, has_vnni, physical_cores  # noqa: E402
from deploy.runners import RUNTIMES, OnnxRuntimeRunner, Runner, runner_for_file  # noqa: E402


SIZE = 224  # input side; --size (--quick: 112)


def export(model: torch.nn.Module, path: str) -> str:
    """The bundles' own exporter: torch.export-based, opset 18, one file, dynamic batch."""
    return str(export_onnx(model, path, (SIZE, SIZE)))


def calibration_images(batches: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8 * batches, 3, SIZE, SIZE)).astype(np.float32)


def quantize(fp32_path: str, out_path: str, cpu_out_path: str) -> tuple[str, str]:
    """The bundles' own two INT8 files (TensorRT's symmetric Q/DQ, and Int8Quantization's CPU form for this CPU
    family), calibrated here on the same synthetic batches."""
    calibration = calibration_images()
    prepared = prepare_for_quantization(fp32_path, out_path + ".pre.onnx")
    quantize_int8(prepared, out_path, calibration)
    quantize_static_int8(prepared, cpu_out_path, calibration, Int8Quantization(form="cpu").int8_form())
    os.unlink(prepared)
    return out_path, cpu_out_path


def openvino_irs(fp32_path: str, folder: str) -> tuple[str, str, str]:
    """OpenVINO IR FP32 and NNCF's INT8 IR of the FP32 ONNX file, as callbacks.OpenVinoIR makes them (its preset
    rule: performance for this ReLU6 network), calibrated on the same synthetic images. Returns (fp32 xml, int8
    xml, preset)."""
    import openvino as ov

    from callbacks.openvino_ir import nncf_int8, save_ir, signed_activations

    model = ov.convert_model(fp32_path)
    fp32_xml = save_ir(model, Path(folder) / "mobilenet_v2.openvino.xml")[0]
    calibration = calibration_images()
    preset = "mixed" if signed_activations(model) else "performance"
    int8_xml = save_ir(nncf_int8(model, [x[None] for x in calibration], len(calibration), preset),
                       Path(folder) / "mobilenet_v2.int8.openvino.xml")[0]
    return str(fp32_xml), str(int8_xml), preset


class Rounds:
    """Runners timed alternately in rounds (A B C ..., B C A ..., the order rotated each round), each one's
    samples pooled and each round's p50 kept: on a shared CPU, load that comes and goes lands on all of them
    alike instead of on whichever ran at the wrong moment, and two runners' p50s from the same round make one
    paired ratio. `run` can be called again to add rounds."""

    def __init__(self, runners: dict, batch: int, per_round: int):
        self.runners, self.batch, self.per_round = runners, batch, max(per_round, 1)
        self.samples = {name: [] for name in runners}
        self.round_p50 = {name: [] for name in runners}
        for runner in runners.values():
            measure(runner, batch, iterations=1, warmup=10 if batch == 1 else 2)

    def run(self, rounds: int) -> None:
        names = list(self.runners)
        for _ in range(rounds):
            start = len(self.round_p50[names[0]]) % len(names)  # each round starts one row later: no row is
            for name in names[start:] + names[:start]:  # always the one that runs right after another's load
                times = measure(self.runners[name], self.batch, iterations=self.per_round, warmup=1,
                                keep_times=True)["times_ms"]
                self.samples[name] += times
                self.round_p50[name].append(float(np.median(times)))

    def rows(self) -> list[dict]:
        rows = []
        for name, times in self.samples.items():
            times, per_round = np.asarray(times), np.asarray(self.round_p50[name])
            rows.append({"runtime": name, "batch": self.batch, "p50_ms": float(np.percentile(times, 50)),
                         "p90_ms": float(np.percentile(times, 90)), "round_min_ms": float(per_round.min()),
                         "round_max_ms": float(per_round.max()),
                         "spread_pct": float(100 * (per_round.max() - per_round.min()) / np.median(per_round)),
                         "throughput": self.batch * len(times) / (times.sum() / 1000.0), "samples": len(times),
                         "rounds": len(per_round)})
        return rows


NNCF_IR = "openvino ir int8 nncf"
# What a target's speed rests on, and whether this CPU has it: a target is "not judged on this CPU" without it.
INSTRUCTIONS = {"VNNI": (has_vnni, "AVX512_VNNI or AVX_VNNI, the int8 dot products the INT8 kernels rest on")}


def best_path(rounds: Rounds) -> str:
    """The row with the lowest pooled p50 among the runner's own settings (torch, the other-hint row and variant
    rows aside)."""
    p50 = {r["runtime"]: r["p50_ms"] for r in rounds.rows()}
    candidates = [n for n in rounds.runners if n != "torch eager" and not is_variant(n) and not n.endswith("-hint")]
    return min(candidates, key=p50.get)


def paired_targets(rounds: Rounds) -> list[tuple[str, str, str, float, bool, str | None]]:
    """The speed targets at the rounds' batch size as (text, numerator row, denominator row, goal,
    lower_is_better, instruction it rests on or None): each is judged on the per-round ratio numerator p50 /
    denominator p50. At batch 32 only the NNCF one."""
    names, best = rounds.runners, best_path(rounds)
    targets = []
    if NNCF_IR in names:
        itself = " (it is NNCF's IR itself, which the bundle ships and `auto` runs)" if best == NNCF_IR else ""
        targets.append((f"best CPU path ({best}) >= NNCF's OpenVINO INT8 IR in speed{itself}", NNCF_IR, best, 1.0,
                        False, None))
    if rounds.batch != 1:
        return targets
    targets += [("ONNX Runtime FP32 >= 2x torch eager", "torch eager", "ort fp32", 2.0, False, None),
                (f"best CPU path ({best}) >= 10x torch eager", "torch eager", best, 10.0, False, "VNNI"),
                (f"best CPU path ({best}) >= 2.5x ONNX Runtime FP32", "ort fp32", best, 2.5, False, "VNNI")]
    if "openvino fp32" in names:
        targets.append(("OpenVINO FP32 <= ONNX Runtime FP32 (p50 ratio)", "openvino fp32", "ort fp32", 1.0, True, None))
    for fp32_name, int8_name in (("ort fp32", "ort int8 cpu-form"), ("openvino fp32", "openvino int8 cpu-form"),
                                 ("openvino ir fp32", NNCF_IR)):
        if int8_name in names and fp32_name in names:
            targets.append((f"{int8_name} >= 1.5x {fp32_name}", fp32_name, int8_name, 1.5, False, "VNNI"))
    return targets


def judge(rounds: Rounds, confidence: float) -> list[tuple[str, dict]]:
    judged = []
    for text, num, den, goal, lower, needs in paired_targets(rounds):
        verdict = ratio_verdict(rounds.round_p50[num], rounds.round_p50[den], goal, lower, confidence)
        if needs is not None and not INSTRUCTIONS[needs][0]():
            verdict = dict(verdict, verdict="not judged", why=f"no {needs} ({INSTRUCTIONS[needs][1]})")
        judged.append((text, verdict))
    return judged


def interval_text(verdict: dict, digits: int = 2) -> str:
    """A verdict's confidence interval as `low..high`, or why there is none (too few rounds give -inf..inf)."""
    low, high = verdict["low"], verdict["high"]
    return f"{low:.{digits}f}..{high:.{digits}f}" if np.isfinite(low) and np.isfinite(high) else "no interval: too few rounds"


def paired_line(text: str, verdict: dict, confidence: float, batch: int = 1) -> str:
    interval = interval_text(verdict, 3)
    word = {"met": "met", "NOT met": "NOT met", "undecided": "undecided (noisy)",
            "not judged": f"not judged on this CPU: {verdict.get('why', '')}"}[verdict["verdict"]]
    return (f"target {text} at batch {batch}: {verdict['ratio']:.2f}x (median of {verdict['rounds']} paired round "
            f"ratios; {100 * confidence:g}% interval {interval}) -> {word}")


def burn_one_core() -> subprocess.Popen:
    """Another process on the device: a busy loop that keeps one core at 100 %."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention(runners: dict, rounds: int, per_round: int) -> dict[str, tuple[list, list]]:
    """Per runner, (quiet round p50s, busy round p50s): each round measures every runner once as the machine is
    and once beside burn_one_core(), alternately, so the two of a round are moments apart."""
    out = {name: ([], []) for name in runners}
    for number in range(rounds):
        for busy in ((False, True) if number % 2 == 0 else (True, False)):
            burner = burn_one_core() if busy else None
            try:
                if burner is not None:
                    time.sleep(0.3)  # the burner is running before the first timed call
                for name, runner in runners.items():
                    times = measure(runner, 1, iterations=per_round, warmup=2, keep_times=True)["times_ms"]
                    out[name][1 if busy else 0].append(float(np.median(times)))
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
    return out


def bundle_bf16_deltas(bundle_dir: str) -> list[tuple[str, float]]:
    """(label, bf16 top-1 minus FP32 top-1 in points) for each bf16 run a bundle's manifest records, from its
    fit-end measurement on the test split."""
    from deploy.bundle import read_manifest

    found = []
    for entry in read_manifest(bundle_dir)["artifacts"]:
        fp32 = (entry.get("metrics") or {}).get("top1")
        for runtime, metrics in (entry.get("runtime_metrics") or {}).items():
            if metrics.get("precision") == "bf16" and fp32 is not None and metrics.get("top1") is not None:
                found.append((f"{entry['file']} in {runtime}", 100 * (metrics["top1"] - fp32)))
    return found


def size_breakdown(int8_path: str, fp32_bytes: int) -> str:
    """Where the INT8 file's bytes go, as % of the FP32 file: int8 weights vs per-channel scales and zero
    points vs int32 biases vs the graph itself."""
    import onnx
    from onnx import numpy_helper

    parts = {"int8 tensors": 0, "fp32 scales": 0, "int32 biases": 0}
    for init in onnx.load(int8_path).graph.initializer:
        array = numpy_helper.to_array(init)
        key = {"int8": "int8 tensors", "uint8": "int8 tensors", "float32": "fp32 scales",
               "int32": "int32 biases"}.get(str(array.dtype))
        if key:
            parts[key] += array.nbytes
    parts["graph"] = os.path.getsize(int8_path) - sum(parts.values())
    return ", ".join(f"{k} {100 * v / fp32_bytes:.1f}%" for k, v in parts.items())


def bench_overhead(runner: Runner, iterations: int, rounds: int) -> tuple[float, float]:
    """p50 through measure() (with the CLI's rich progress bar advancing every call) vs a bare timing loop,
    alternated in rounds so machine load lands on both alike."""
    from rich.console import Console
    from rich.progress import Progress

    batch = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    bare, timed = [], []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("overhead", total=iterations * rounds)
        for _ in range(rounds):
            for _ in range(max(iterations // rounds, 1)):
                start = time.perf_counter()
                runner.infer(batch)
                bare.append(time.perf_counter() - start)
            result = measure(runner, 1, iterations=max(iterations // rounds, 1), warmup=1, keep_times=True,
                             progress=lambda n: bar.advance(task, n))
            timed += result["times_ms"]
    return float(np.median(timed)), float(np.median(bare) * 1000)


def build_runners(model, fp32: str, int8: str, int8_cpu: str, threads: int, tmp: str) -> tuple[dict, dict, dict]:
    """(runners, files, other_hint): the rows timed at every batch, the file behind each row (a list for an IR:
    its .xml and .bin), and per batch the OpenVINO FP32 row under the hint auto does not use at that batch."""
    files = {"torch eager": None, "ort fp32": fp32, "ort int8 trt-form": int8, "ort int8 cpu-form": int8_cpu,
             "openvino fp32": fp32, "openvino bf16": fp32, "openvino int8 cpu-form": int8_cpu}
    runners = {"torch eager": TorchRunner(model, (3, SIZE, SIZE)),
               "ort fp32": OnnxRuntimeRunner(fp32, threads=threads),
               "ort int8 trt-form": OnnxRuntimeRunner(int8, threads=threads),
               "ort int8 cpu-form": OnnxRuntimeRunner(int8_cpu, threads=threads)}
    other_hint = {}
    if not RUNTIMES["openvino"].available():
        print("openvino is not installed (pip install -e '.[openvino]'): no OpenVINO rows", file=sys.stderr)
        return runners, files, other_hint
    runners["openvino fp32"] = runner_for_file(fp32, "onnx", threads=threads, runtime="openvino")
    if RUNTIMES["openvino-bf16"].available():
        runners["openvino bf16"] = runner_for_file(fp32, "onnx", threads=threads, runtime="openvino-bf16")
    else:
        print(f"no bf16 row: {RUNTIMES['openvino-bf16'].status()[1]}", file=sys.stderr)
    runners["openvino int8 cpu-form"] = runner_for_file(int8_cpu, "onnx-int8", threads=threads, runtime="openvino")
    try:
        import nncf  # noqa: F401
    except ImportError:
        print("nncf is not installed (pip install -e '.[openvino]'): no OpenVINO IR rows", file=sys.stderr)
    else:
        started = time.monotonic()
        fp32_xml, int8_xml, preset = openvino_irs(fp32, tmp)
        print(f"NNCF INT8 IR: preset {preset}, {len(calibration_images())} calibration images, "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        for name, xml in (("openvino ir fp32", fp32_xml), (NNCF_IR, int8_xml)):
            runners[name] = runner_for_file(xml, "openvino-ir", threads=threads, runtime="openvino")
            files[name] = [xml, xml[:-len(".xml")] + ".bin"]
    for batch, hint in ((1, "throughput"), (32, "latency")):
        name = f"openvino fp32 {hint}-hint"
        other_hint[batch] = (name, runner_for_file(fp32, "onnx", threads=threads, runtime="openvino", hint=hint))
        files[name] = fp32
    return runners, files, other_hint


def is_variant(name: str) -> bool:
    """True for an --openvino-variant row (`v1 openvino fp32`): shown and compared, but not what targets judge."""
    return name[:1] == "v" and name.split(" ", 1)[0][1:].isdigit()


def variant_runners(args, fp32: str, int8_cpu: str, threads: int) -> tuple[dict, list[str]]:
    """Batch-1 rows for each --openvino-variant (KEY=VALUE,...: CPU plugin properties on top of the runner's
    own): the FP32 and the CPU-form INT8 file compiled with them, named `vN openvino ...`."""
    from deploy.runtimes.openvino import OpenVinoRunner

    runners, legend = {}, []
    for number, text in enumerate([] if "none" in args.openvino_variant else args.openvino_variant, 1):
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise SystemExit(f"--openvino-variant {text!r} is not KEY=VALUE[,KEY=VALUE...]; e.g. "
                             "ENABLE_CPU_PINNING=YES,CPU_DENORMALS_OPTIMIZATION=YES")
        properties = {key.strip(): value.strip() for key, value in pairs}
        legend.append(f"v{number}: " + ", ".join(f"{k}={v}" for k, v in properties.items()))
        call = properties.pop("call", "sync")  # call=async: the runner's start_async + wait instead of infer
        for row, path in (("openvino fp32", fp32), ("openvino int8 cpu-form", int8_cpu)):
            runners[f"v{number} {row}"] = OpenVinoRunner(path, threads, properties=properties, call=call)
    return runners, legend


def variant_lines(rounds: "Rounds", legend: list[str], confidence: float) -> list[str]:
    """Each variant row against the same file under the runner's own settings, and against ONNX Runtime FP32,
    as paired round ratios (informative: the targets judge the runner's own settings)."""
    lines = []
    for number, text in enumerate(legend, 1):
        parts = []
        for row in ("openvino fp32", "openvino int8 cpu-form"):
            name = f"v{number} {row}"
            if row not in rounds.round_p50:
                continue
            own = ratio_verdict(rounds.round_p50[name], rounds.round_p50[row], 1.0, True, confidence)
            ort = ratio_verdict(rounds.round_p50["ort fp32"], rounds.round_p50[name], 1.0, False, confidence)
            parts.append(f"{row} {own['ratio']:.3f}x the p50 of its own settings "
                         f"({own['low']:.3f}..{own['high']:.3f}), "
                         f"ORT FP32 / it {ort['ratio']:.2f}x ({ort['low']:.2f}..{ort['high']:.2f})")
        lines.append(f"{text}: " + "; ".join(parts))
    return lines


def time_batch1(runners: dict, args) -> tuple[Rounds, float]:
    """--rounds interleaved rounds at batch 1, then --step more at a time while a speed target is undecided,
    up to --max-rounds or --extra-seconds, whichever comes first. Returns the rounds and the seconds added."""
    rounds = Rounds(runners, 1, args.iterations // args.rounds)
    rounds.run(args.rounds)
    start = time.monotonic()
    while (any(v["verdict"] == "undecided" for _, v in judge(rounds, args.confidence))
           and len(rounds.round_p50["ort fp32"]) < args.max_rounds
           and time.monotonic() - start < args.extra_seconds):
        rounds.run(min(args.step, args.max_rounds - len(rounds.round_p50["ort fp32"])))
    return rounds, time.monotonic() - start


def print_table(rows: list[dict], sizes: dict) -> None:
    p50 = {(r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
    header = f"{'runtime':<30}{'batch':>6}{'p50 ms':>9}{'rounds p50 min..max':>21}{'spread':>8}{'img/s':>9}" \
             f"{'vs torch':>10}{'vs ORT fp32':>12}{'size MB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        size, b = sizes[r["runtime"]], r["batch"]
        spread = f"{r['round_min_ms']:.2f}..{r['round_max_ms']:.2f}"
        print(f"{r['runtime']:<30}{b:>6}{r['p50_ms']:>9.2f}{spread:>21}{r['spread_pct']:>7.0f}%"
              f"{r['throughput']:>9.1f}{p50['torch eager', b] / r['p50_ms']:>9.2f}x"
              f"{p50['ort fp32', b] / r['p50_ms']:>11.2f}x{(size / 1e6 if size else float('nan')):>9.2f}")


def bf16_line(rounds: Rounds, confidence: float) -> str:
    """Whether OpenVINO's bf16 run of the FP32 file is faster than f32 here at batch 1 (deploy offers it only where
    it is: deploy.selection.bf16_not_offered)."""
    if "openvino bf16" not in rounds.runners:
        return f"OpenVINO bf16 vs f32: not judged on this CPU: {RUNTIMES['openvino-bf16'].status()[1]}"
    v = ratio_verdict(rounds.round_p50["openvino fp32"], rounds.round_p50["openvino bf16"], 1.0, False, confidence)
    word = {"met": "faster: offered", "NOT met": "slower: not offered", "undecided": "undecided (noisy)"}[v["verdict"]]
    return (f"OpenVINO bf16 vs f32 at batch 1: f32 p50 / bf16 p50 {v['ratio']:.2f}x ({100 * confidence:g}% interval "
            f"{v['low']:.2f}..{v['high']:.2f}) -> bf16 {word}")


def contention_lines(args, fp32: str, best, best_name: str, threads: int) -> list[str]:
    """Quiet vs beside a busy core, ONNX Runtime's threads sleeping (deploy's default) and spinning (--spin), and
    the best CPU path; prints the table and the `contended <= 2x quiet` targets of deploy's defaults, returns
    their verdicts."""
    runners = {"ort fp32 (threads sleep: default)": OnnxRuntimeRunner(fp32, threads=threads, spin=False),
               "ort fp32 (threads spin: --spin)": OnnxRuntimeRunner(fp32, threads=threads, spin=True)}
    if best_name != "ort fp32":  # the best path as deploy runs it (ONNX Runtime's threads sleeping)
        runners[f"{best_name} (best path)"] = best
    per_round = max(args.iterations // args.rounds, 5)
    found = contention(runners, args.contention_rounds, per_round)
    print(f"\ncontention: {args.contention_rounds} rounds of {per_round} batch-1 calls per runner, each round once "
          f"as the machine is and once beside a process burning one core (of {os.cpu_count()} CPUs), alternately")
    print(f"{'runner':<36}{'quiet p50 ms':>14}{'busy p50 ms':>13}{'busy/quiet':>12}")
    for name, (quiet, busy) in found.items():
        print(f"{name:<36}{np.median(quiet):>14.2f}{np.median(busy):>13.2f}"
              f"{np.median(np.asarray(busy) / np.asarray(quiet)):>11.2f}x")
    spin, sleep = found["ort fp32 (threads spin: --spin)"], found["ort fp32 (threads sleep: default)"]
    for i, label in ((0, "quiet"), (1, "busy")):
        v = ratio_verdict(spin[i], sleep[i], 1.0, True, args.confidence)
        print(f"ONNX Runtime spinning / sleeping threads, {label}: {v['ratio']:.2f}x ({interval_text(v)})")
    verdicts = []
    for name in [n for n in found if "spin" not in n]:
        quiet, busy = found[name]
        v = ratio_verdict(busy, quiet, 2.0, True, args.confidence)
        verdicts.append(v["verdict"])
        print(f"target {name} contended <= 2x quiet at batch 1: {v['ratio']:.2f}x (median of {v['rounds']} paired "
              f"rounds; {100 * args.confidence:g}% interval {interval_text(v)}) -> "
              + {"met": "met", "NOT met": "NOT met", "undecided": "undecided (noisy)"}[v["verdict"]])
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300,
                        help="timed calls per row at batch 1 over --rounds (batch 32: a tenth)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for torch, ONNX Runtime and OpenVINO alike (0: the usable physical cores)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds the iterations are split into")
    parser.add_argument("--step", type=int, default=5, help="rounds added at a time while a target is undecided")
    parser.add_argument("--max-rounds", type=int, default=120, help="batch-1 rounds at most")
    parser.add_argument("--extra-seconds", type=float, default=60.0,
                        help="seconds at most spent adding batch-1 rounds while a target is undecided")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence of the interval each speed target is judged on")
    parser.add_argument("--leak-iterations", type=int, default=1000)
    parser.add_argument("--bundle", action="append", default=[],
                        help="a bundle folder whose fit-end bf16 row is checked against its FP32 top-1 (repeatable)")
    parser.add_argument("--openvino-variant", action="append", default=["call=async"], metavar="KEY=VALUE[,...]",
                        help="batch-1 rows of the OpenVINO FP32 and CPU-form INT8 files under further CPU plugin "
                             "properties (call=async: start_async + wait; always v1, `none`: no rows) (repeatable)")
    parser.add_argument("--contention-rounds", type=int, default=6,
                        help="rounds of the quiet vs beside-a-busy-core measurement (0: none)")
    parser.add_argument("--size", type=int, default=224, help="input side in px (the targets are set at 224)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few iterations and rounds, 112 px (its figures say only that every row is made)")
    args = parser.parse_args()
    global SIZE
    SIZE = 112 if args.quick and args.size == 224 else args.size
    if args.quick:
        args.iterations, args.rounds, args.max_rounds, args.extra_seconds = 60, 6, 12, 10.0
        args.leak_iterations, args.contention_rounds = 100, min(args.contention_rounds, 2)
    if args.rounds < 1 or args.iterations < args.rounds:
        parser.error(f"--iterations ({args.iterations}) must be at least --rounds ({args.rounds}), which is >= 1")

    load_before = os.getloadavg()[0]
    threads = args.threads or physical_cores()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(model, os.path.join(tmp, "mobilenet_v2.onnx"))
        int8, int8_cpu = quantize(fp32, os.path.join(tmp, "mobilenet_v2.int8.onnx"),
                                  os.path.join(tmp, "mobilenet_v2.int8-cpu.onnx"))
        runners, files, other_hint = build_runners(model, fp32, int8, int8_cpu, threads, tmp)
        sizes = {name: (sum(map(os.path.getsize, path if isinstance(path, list) else [path])) if path else None)
                 for name, path in files.items()}
        probe = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
        with torch.inference_mode():
            parity = float(np.abs(runners["ort fp32"].infer(probe) - model(torch.from_numpy(probe)).numpy()).max())

        batch1 = dict(runners)
        variants, legend = variant_runners(args, fp32, int8_cpu, threads) if "openvino fp32" in runners else ({}, [])
        batch1.update(variants)
        sizes.update({name: sizes[name.split(" ", 1)[1]] for name in variants})
        if 1 in other_hint:
            batch1[other_hint[1][0]] = other_hint[1][1]
        rounds1, extra_s = time_batch1(batch1, args)
        batch32 = dict(runners)
        if 32 in other_hint:
            batch32[other_hint[32][0]] = other_hint[32][1]
        rounds32 = Rounds(batch32, 32, 1 if args.quick else 2)
        rounds32.run(3 if args.quick else 8)  # 8: enough paired rounds for a 95% interval of their median
        rows = rounds1.rows() + rounds32.rows()
        p50 = {(r["runtime"], r["batch"]): r["p50_ms"] for r in rows}
        n1, n32 = len(rounds1.round_p50["ort fp32"]), len(rounds32.round_p50["ort fp32"])
        cpu = Int8Quantization(form="cpu").int8_form()
        flags = cpu_flags()
        instructions = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in (
            ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"), ("AVX512_BF16", "avx512_bf16"), ("AMX", "amx_tile")))
        print(f"CPU: {cpu_model()} ({instructions})")
        if args.quick:
            print(f"--quick: a smoke run at {SIZE} px with few rounds; every row below was made and measured, but the "
                  "targets are set at 224 px with full rounds: run without --quick for verdicts that count")
        print(f"MobileNetV2 {SIZE}x{SIZE}, random weights, {threads} threads for every runner (torch: "
              f"{torch.get_num_threads()}; {physical_cores()} usable physical cores, {os.cpu_count()} CPUs); "
              f"batch 1: {n1} interleaved rounds of {rounds1.per_round} calls ({args.rounds} + {n1 - args.rounds} "
              f"added in {extra_s:.0f} s while a target was undecided), batch 32: {n32}; load average "
              f"{load_before:.2f} before the run; ONNX vs torch max |diff| {parity:.2e}; CPU-form INT8: {cpu.name}"
              f"{' (7-bit weights)' if cpu.reduce_range else ''}; OpenVINO hint: latency at batch 1, throughput at 32")
        print_table(rows, sizes)
        worst = max((r for r in rows if r["batch"] == 1), key=lambda r: r["spread_pct"])
        print()
        print(f"machine: load average {load_before:.2f} before the run; widest batch-1 round p50 spread "
              f"{worst['spread_pct']:.0f}% ({worst['runtime']}). Speed targets are judged on paired per-round "
              "ratios (two rows' p50s from the same round), met / NOT met only when the interval clears the goal")
        if other_hint:
            (name1, _), (name32, _) = other_hint[1], other_hint[32]
            print(f"OpenVINO FP32 hints: batch 1 latency {p50['openvino fp32', 1]:.2f} ms vs throughput "
                  f"{p50[name1, 1]:.2f} ms; batch 32 throughput {p50['openvino fp32', 32]:.2f} ms vs latency "
                  f"{p50[name32, 32]:.2f} ms")

        for line in variant_lines(rounds1, legend, args.confidence):
            print(line)
        verdicts = []

        def target(text: str, value: float, goal: float, unit: str = "x", lower_is_better: bool = False) -> None:
            met = value <= goal if lower_is_better else value >= goal
            verdicts.append("met" if met else "NOT met")
            print(f"target {text}: {value:.2f}{unit} -> {verdicts[-1]}")

        for rounds in (rounds1, rounds32):
            for text, verdict in judge(rounds, args.confidence):
                verdicts.append(verdict["verdict"])
                print(paired_line(text, verdict, args.confidence, rounds.batch))
        print(bf16_line(rounds1, args.confidence))
        if args.contention_rounds and "openvino fp32" in runners:
            verdicts += contention_lines(args, fp32, runners[best_path(rounds1)], best_path(rounds1), threads)
        for name, path in (("INT8 TensorRT-form", int8), ("INT8 CPU-form", int8_cpu)):
            ratio = 100 * os.path.getsize(path) / sizes["ort fp32"]
            target(f"{name} file <= 27% of FP32 ({size_breakdown(path, sizes['ort fp32'])})", ratio, 27, "%",
                   lower_is_better=True)
        for bundle_dir in args.bundle:
            deltas = bundle_bf16_deltas(bundle_dir)
            if not deltas:  # a CPU without native bf16 makes no bf16 row: nothing to judge there, not a miss
                has_bf16 = RUNTIMES["openvino-bf16"].available()
                verdicts += ["NOT met"] if has_bf16 else []
                print(f"target bf16 within 0.3 pt of FP32 top-1 ({bundle_dir}): no bf16 row in its manifest -> "
                      + ("NOT met" if has_bf16 else f"not judged ({RUNTIMES['openvino-bf16'].status()[1]})"))
            for label, delta in deltas:
                target(f"bf16 within 0.3 pt of FP32 test top-1 ({bundle_dir}: {label}, drop)", max(0.0, -delta), 0.3,
                       " pt", lower_is_better=True)

        ort = runners["ort fp32"]
        timed, bare = bench_overhead(ort, 2 * args.iterations // 5, args.rounds)
        overhead = timed / bare - 1
        print(f"bench overhead (measure p50 {timed:.2f} ms vs bare loop p50 {bare:.2f} ms): {100 * overhead:+.1f}% "
              f"-> {'met' if overhead < 0.05 else 'NOT met'} (< 5%)")
        leak = measure(ort, 1, iterations=args.leak_iterations, warmup=20)
        print(f"resident memory growth over {args.leak_iterations} iterations (onnxruntime fp32, batch 1): "
              f"{leak['rss_growth_mb']:+.2f} MB -> {'no leak' if leak['memory_ok'] else 'LEAK?'}")
        counts = {word: verdicts.count(word) for word in ("met", "NOT met", "undecided", "not judged")}
        judged = len(verdicts) - counts["not judged"]
        print()
        print(f"summary: {counts['met']} met, {counts['NOT met']} NOT met, {counts['undecided']} undecided (noisy) of "
              f"{judged} targets judged ({counts['not judged']} not judged on this CPU) -> "
              + ("ALL MET" if counts["met"] == judged else "NOT ALL MET" if counts["NOT met"] else "UNDECIDED: rerun"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
