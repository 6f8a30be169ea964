"""A stand-in `tensorrt` module (and CUDA memory layer) for testing our control flow around TensorRT.

TensorRT cannot be installed here, and it reports most failures by return value, not by raising. This fake
has the names deploy/ uses (checked against the 10.3 and 11.4 bindings), records every call that changes
state, and fails on request: `make_tensorrt(fail={"add_optimization_profile"})` makes that call return what
real TensorRT returns on failure ("parse" makes the parser report PARSER_ERRORS; `raise_in` makes a call
raise). Its engine is a plan of JSON, and "inference" writes each image's first ten pixel values as its
logits, so a test can check which numbers came back.
"""

from __future__ import annotations

import json
import types

import numpy as np

PARSER_ERRORS = ["In node 3 with name: /features/Conv and operator: Conv (parseNode): INVALID_NODE: bad\nweights",
                 "In node 4 (importDequantizeLinear): UNSUPPORTED_NODE: only activation types allowed",
                 "third", "fourth"]
FAILS_WITH = {"add_optimization_profile": -1, "set_timing_cache": False, "get_timing_cache": None,
              "create_timing_cache": None, "build_serialized_network": None, "set_input_shape": False,
              "set_tensor_address": False, "execute_async_v3": False, "deserialize_cuda_engine": None}


class _Flags:
    def __init__(self, names):
        for name in names:
            setattr(self, name, name)


def make_tensorrt(version: str = "10.3.0", fail=(), input_shape=(-1, 3, 14, 14), raise_in=None):
    """A fresh fake module; `trt.calls` lists (name, args) in call order; `trt.device` holds fake GPU memory."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    trt.device = {}
    trt.fail = fail = set(fail)  # a test may add to it between calls

    def call(name, *args, ok=True):
        trt.calls.append((name, args))
        if raise_in == name:
            raise RuntimeError(f"{name}: internal TensorRT error")
        if name in fail:
            return FAILS_WITH[name]
        return ok

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            self.severity = severity

    # As in NvInfer.h: STRONGLY_TYPED is 1 in both; EXPLICIT_BATCH (0) is gone in 11.x.
    creation = {"STRONGLY_TYPED": 1} if version.startswith("11.") else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    # 11.x removed the FP16 and INT8 builder flags: reaching for them there must fail as it does for real.
    trt.BuilderFlag = _Flags(["TF32"] if version.startswith("11.") else ["FP16", "INT8", "TF32"])
    trt.MemoryPoolType = _Flags(["WORKSPACE"])
    trt.TensorIOMode = _Flags(["INPUT", "OUTPUT"])
    trt.Logger = Logger
    trt.nptype = lambda dtype: {"float32": np.float32, "float16": np.float16}[dtype]

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.num_inputs = self.num_outputs = 0

        def get_input(self, i):
            return Tensor("input", input_shape)

        def get_output(self, i):
            return Tensor("logits", (-1, 10))

    class Parser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            ok = call("parse_from_file", path)
            if "parse" in fail:
                self.num_errors = len(PARSER_ERRORS)
                return False
            self.network.num_inputs = self.network.num_outputs = 1
            return ok

        def get_error(self, i):
            return PARSER_ERRORS[i]

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"cache:" + self.data)

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            call("set_shape", name, lo, opt, hi)
            self.shapes = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self):
            self.flags = {"TF32"}  # TensorRT's default
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            call("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            call("set_flag", flag)
            self.flags.add(flag)

        def clear_flag(self, flag):
            call("clear_flag", flag)
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            self.profile = profile
            return call("add_optimization_profile", profile, ok=0)

        def create_timing_cache(self, data):
            return call("create_timing_cache", data, ok=TimingCache(bytes(data)))

        def set_timing_cache(self, cache, ignore_mismatch):
            ok = call("set_timing_cache", cache, ignore_mismatch)
            self.cache = cache if ok else None
            return ok

        def get_timing_cache(self):
            return call("get_timing_cache", ok=self.cache)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            call("create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            lo, opt, hi = config.profile.shapes
            plan = json.dumps({"flags": sorted(config.flags), "min": lo, "opt": opt, "max": hi}).encode()
            return call("build_serialized_network", network, config, ok=memoryview(plan))

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            ok = call("set_input_shape", name, tuple(shape))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name):
            return (self.shapes["input"][0], 10)

        def set_tensor_address(self, name, pointer):
            ok = call("set_tensor_address", name, pointer)
            self.addresses[name] = pointer
            return ok

        def execute_async_v3(self, stream):
            ok = call("execute_async_v3", stream)
            if ok:
                n = self.shapes["input"][0]
                per_image = int(np.prod(self.engine.plan["max"][1:]))
                images = trt.device[self.addresses["input"]][:n * per_image].reshape(n, per_image)
                trt.device[self.addresses["logits"]][:n * 10] = images[:, :10].ravel()
            return ok

    class Engine:
        num_io_tensors = 2

        def __init__(self, plan):
            self.plan = plan

        def create_execution_context(self):
            return Context(self)

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == "input" else "OUTPUT"

        def get_tensor_profile_shape(self, name, profile):
            return [self.plan["min"], self.plan["opt"], self.plan["max"]]

        def get_tensor_dtype(self, name):
            return "float32"

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return call("deserialize_cuda_engine", ok=Engine(json.loads(bytes(plan))))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


class FakeMemory:
    """deploy.cuda_memory's interface over plain numpy: device pointers are keys into `trt.device`."""

    name = "fake"
    stream_handle = 7

    def __init__(self, trt):
        self.trt = trt
        self.closed = False

    def activate(self):
        pass

    def deactivate(self):
        pass

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def device(self, nbytes):
        pointer = 0x1000 * (len(self.trt.device) + 1)
        self.trt.device[pointer] = np.zeros(nbytes // 4, np.float32)
        return pointer

    def htod(self, pointer, host):
        self.trt.device[pointer][:host.size] = host.ravel()

    def dtoh(self, host, pointer):
        host[...] = self.trt.device[pointer][:host.size].reshape(host.shape)

    def synchronize(self):
        pass

    def close(self):
        self.closed = True
