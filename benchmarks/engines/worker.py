#!/usr/bin/env python
"""One inference runtime in a process of its own, driven by ``benchmarks/bench_e2e.py``.

Runs in the runtime's own venv (``build/engines/<name>``; see ``setup_engines.sh``) and needs
only the standard library, numpy and the runtime it loads: ONNX Runtime, OpenVINO (+ NNCF),
DeepSparse, or torch (``engine="torch"``: a builder function, given as ``module:function`` plus
a directory to import it from, makes the model; that is how bench_e2e runs each torch method in
a process of its own, like the others).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout. Every reply has
``"ok": true`` or ``"ok": false, "error": "..."``. Commands:

- ``hello``: versions of python, numpy and the runtimes installed here (none imported).
- ``load {id, engine, path | builder, threads, shape, input_names, options}``: builds a runner.
  ``shape`` ``[batch, seq]`` compiles for that static shape (OpenVINO, DeepSparse); the reply's
  ``info`` says how the runtime was configured.
- ``inputs {id, files: {name: .npy path}}``: loads one input set, kept in memory.
- ``run {id, inputs, n}``: ``n`` calls; ``times`` in seconds, each measured here around the
  call alone (no pipe, no JSON).
- ``output {id, inputs, path}``: one call, its first output saved to ``path`` (.npy), with a
  checksum and its first values in the reply.
- ``unload {id}``, ``quit``.
- ``ort_optimize {src, dst, num_heads, hidden_size}``, ``ort_quantize_dynamic {src, dst}``,
  ``ort_quantize_static_qoperator {src, dst, calib}``, ``nncf_quantize {src, dst, calib}``: model
  preparation (``calib``: ``{name: .npy path}``, one calibration sample per row).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

# Runtimes and their banners may print to stdout: keep the real stdout for the protocol and send
# everything else to stderr (bench_e2e writes it to a log file).
_PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # no usage reports from DeepSparse during a benchmark

import numpy as np  # noqa: E402

RUNTIMES = ("onnxruntime", "openvino", "nncf", "deepsparse", "torch", "onnx", "sympy")


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _release_free_memory() -> None:
    """Hands memory freed while building a model back to the OS. A process that keeps a lot of
    idle heap runs the same forward measurably slower (fresh pages for large temporaries), and an
    engine that loads its model file never has that heap: without this the torch methods, which
    build their model in the process, would be timed at a disadvantage."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- runners -------------------------------------------------------------------------------------


class OrtRunner:
    def __init__(self, path, threads, shape, input_names, options):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if options.get("spin") else "0"
        # Spinning threads keep burning the cores after run() returns, which slows whatever the
        # interleaved benchmark runs next (another process on the same cores).
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        fused = None
        tmp = None
        if options.get("inspect"):
            tmp = tempfile.mkdtemp(prefix="ort-opt-")
            so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        if tmp is not None:
            try:
                import onnx

                m = onnx.load(so.optimized_model_filepath, load_external_data=False)
                counts = {}
                for node in m.graph.node:
                    if node.domain == "com.microsoft":
                        counts[node.op_type] = counts.get(node.op_type, 0) + 1
                fused = counts
            except Exception as e:  # inspection only: the session itself is fine
                fused = f"not inspected: {e}"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.names = [i.name for i in self.session.get_inputs()]
        self.info = {"onnxruntime": ort.__version__, "intra_op_threads": threads, "allow_spinning": spin,
                     "graph_optimization": "ORT_ENABLE_ALL"}
        if fused is not None:
            self.info["fused_ops"] = fused

    def feed(self, arrays):
        return {n: arrays[n] for n in self.names}

    def __call__(self, feed):
        return self.session.run(None, feed)[0]


class OvRunner:
    def __init__(self, path, threads, shape, input_names, options):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        if shape is not None:
            model.reshape({inp.get_any_name(): list(shape) for inp in model.inputs})
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if options.get("precision"):
            config["INFERENCE_PRECISION_HINT"] = options["precision"]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.names = [i.get_any_name() for i in self.compiled.inputs]
        self.info = {"openvino": ov.get_version(), "static_shape": shape}
        for prop in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING"):
            try:
                v = self.compiled.get_property(prop)
                self.info[prop] = v.to_string() if hasattr(v, "to_string") else str(v)
            except Exception:
                pass
        if options.get("inspect"):
            # What the CPU plugin actually runs each matrix product in (e.g. FullyConnected i8).
            kinds = {}
            for op in self.compiled.get_runtime_model().get_ops():
                rt = op.get_rt_info()
                layer = rt["layerType"].astype(str) if "layerType" in rt else "?"
                if layer in ("FullyConnected", "MatMul") or "Attention" in layer:
                    k = f"{layer} {rt['runtimePrecision'].astype(str) if 'runtimePrecision' in rt else '?'}"
                    kinds[k] = kinds.get(k, 0) + 1
            self.info["runtime_matmuls"] = kinds

    def feed(self, arrays):
        return {n: arrays[n] for n in self.names}

    def __call__(self, feed):
        self.request.infer(feed)
        return self.request.get_output_tensor(0).data


class DeepSparseRunner:
    def __init__(self, path, threads, shape, input_names, options):
        import deepsparse

        if shape is None:
            raise ValueError("DeepSparse compiles for a static shape: load needs shape [batch, seq]")
        # compile_model rewrites the ONNX file it is given with the static input shapes: give it a copy.
        self._tmp = tempfile.mkdtemp(prefix="deepsparse-")
        local = os.path.join(self._tmp, "model.onnx")
        shutil.copyfile(path, local)
        batch = shape[0]
        self.engine = deepsparse.compile_model(local, batch_size=batch, num_cores=threads,
                                               input_shapes=[list(shape)] * len(input_names))
        self.names = list(getattr(self.engine, "input_names", None) or input_names)
        self.info = {"deepsparse": deepsparse.__version__, "static_shape": shape, "num_cores": threads}
        for attr in ("fraction_of_supported_ops", "cpu_avx_type", "cpu_vnni", "num_streams"):
            try:
                v = getattr(self.engine, attr)
                self.info[attr] = v if isinstance(v, (int, float, bool, str)) else str(v)
            except Exception:
                pass

    def feed(self, arrays):
        return [np.ascontiguousarray(arrays[n]) for n in self.names]

    def __call__(self, feed):
        return self.engine.run(feed)[0]

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)


class TorchRunner:
    """A torch model made by ``builder(**args)`` (returns ``(model, info)``), called as
    ``model(**inputs)`` under inference mode; output: the first element of the result."""

    def __init__(self, builder, threads, shape, input_names, options):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        directory, spec = builder["directory"], builder["function"]
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)
        module, _, fn = spec.partition(":")
        self.model, info = getattr(importlib.import_module(module), fn)(**builder.get("args", {}))
        _release_free_memory()
        self.names = list(input_names)
        self.info = {"torch": torch.__version__, "threads": torch.get_num_threads(), **(info or {})}

    def feed(self, arrays):
        return {n: self.torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in self.names}

    def __call__(self, feed):
        with self.torch.inference_mode():
            out = self.model(**feed)
        return out[0] if not isinstance(out, self.torch.Tensor) else out

    def to_numpy(self, out):
        return out.float().numpy()


RUNNERS = {"onnxruntime": OrtRunner, "openvino": OvRunner, "deepsparse": DeepSparseRunner, "torch": TorchRunner}


# --- model preparation -----------------------------------------------------------------------------


def _calibration(calib: dict) -> list[dict]:
    arrays = {k: np.load(v) for k, v in calib.items()}
    n = len(next(iter(arrays.values())))
    return [{k: a[i:i + 1] for k, a in arrays.items()} for i in range(n)]


def ort_optimize(src, dst, num_heads, hidden_size):
    """ONNX Runtime's offline BERT fusions (Attention, SkipLayerNormalization, EmbedLayerNormalization,
    BiasGelu), the way ONNX Runtime's documentation deploys BERT: its session-time optimizations
    alone leave attention unfused on this export."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(src, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                     opt_level=0)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(dst)
    return {"recipe": "onnxruntime.transformers.optimizer.optimize_model(model_type='bert'), fused: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(fused.items()))}


def ort_quantize_dynamic(src, dst):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused com.microsoft ops have no ONNX type inference: their outputs are float32.
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"recipe": "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8) of the fused model"}


def ort_quantize_static_qoperator(src, dst, calib):
    """The INT8 ONNX DeepSparse runs fast: QOperator (QLinearMatMul), int8 activations and
    weights, both symmetric, weights per tensor. Only MatMul is quantized: the other QOperator
    kernels of ONNX Runtime are com.microsoft ops that DeepSparse does not know."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    samples = _calibration(calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    options = {"ActivationSymmetric": True, "WeightSymmetric": True}
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QOperator, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=False, op_types_to_quantize=["MatMul"],
                    extra_options=options)
    return {"recipe": "onnxruntime.quantization.quantize_static(QOperator, QInt8 activations and weights, "
                      f"symmetric, per tensor, MatMul only), {len(samples)} calibration samples"}


def nncf_quantize(src, dst, calib):
    import nncf
    import openvino as ov

    samples = _calibration(calib)
    model = ov.Core().read_model(src)
    quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(samples))
    ov.save_model(quantized, dst)
    return {"recipe": f"nncf.quantize(model_type=TRANSFORMER), {len(samples)} calibration samples",
            "nncf": nncf.__version__}


# --- the loop --------------------------------------------------------------------------------------


class Worker:
    def __init__(self):
        self.runners = {}
        self.inputs = {}
        self.feeds = {}  # (runner id, inputs id) -> the runner's own input structure

    def _feed(self, rid, iid):
        key = (rid, iid)
        if key not in self.feeds:
            self.feeds[key] = self.runners[rid].feed(self.inputs[iid])
        return self.feeds[key]

    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "hello":
            return {"python": platform.python_version(), "numpy": np.__version__, "pid": os.getpid(),
                    "versions": {r: _version(r) for r in RUNTIMES}}
        if cmd == "load":
            engine = req["engine"]
            if engine not in RUNNERS:
                raise ValueError(f"unknown engine {engine!r}")
            if req["id"] in self.runners:
                raise ValueError(f"runner {req['id']!r} is already loaded")
            t0 = time.perf_counter()
            source = req["builder"] if engine == "torch" else req["path"]
            runner = RUNNERS[engine](source, int(req.get("threads", 1)), req.get("shape"),
                                     req.get("input_names", ["input_ids", "attention_mask"]), req.get("options", {}))
            self.runners[req["id"]] = runner
            runner.info["rss_mb"] = _rss_mb()
            return {"info": runner.info, "load_s": time.perf_counter() - t0}
        if cmd == "unload":
            runner = self.runners.pop(req["id"], None)
            self.feeds = {k: v for k, v in self.feeds.items() if k[0] != req["id"]}
            if runner is not None and hasattr(runner, "close"):
                runner.close()
            return {}
        if cmd == "inputs":
            self.inputs[req["id"]] = {k: np.load(v) for k, v in req["files"].items()}
            self.feeds = {k: v for k, v in self.feeds.items() if k[1] != req["id"]}
            return {}
        if cmd == "run":
            runner = self.runners[req["id"]]
            feed = self._feed(req["id"], req["inputs"])
            times = []
            for _ in range(int(req.get("n", 1))):
                t0 = time.perf_counter()
                runner(feed)
                times.append(time.perf_counter() - t0)
            return {"times": times}
        if cmd == "output":
            runner = self.runners[req["id"]]
            out = runner(self._feed(req["id"], req["inputs"]))
            out = runner.to_numpy(out) if hasattr(runner, "to_numpy") else np.asarray(out)
            out = np.ascontiguousarray(out, dtype=np.float32)
            np.save(req["path"], out)
            return {"shape": list(out.shape), "checksum": float(out.astype(np.float64).sum()),
                    "first": [float(v) for v in out.reshape(-1)[:4]]}
        if cmd == "ort_optimize":
            return ort_optimize(req["src"], req["dst"], int(req["num_heads"]), int(req["hidden_size"]))
        if cmd == "ort_quantize_dynamic":
            return ort_quantize_dynamic(req["src"], req["dst"])
        if cmd == "ort_quantize_static_qoperator":
            return ort_quantize_static_qoperator(req["src"], req["dst"], req["calib"])
        if cmd == "nncf_quantize":
            return nncf_quantize(req["src"], req["dst"], req["calib"])
        raise ValueError(f"unknown command {cmd!r}")

    def serve(self):
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if req.get("cmd") == "quit":
                    _PROTOCOL.write(json.dumps({"ok": True}) + "\n")
                    break
                reply = {"ok": True, **self.handle(req)}
            except Exception as e:
                traceback.print_exc()
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}".strip()}
            _PROTOCOL.write(json.dumps(reply) + "\n")
        for runner in self.runners.values():
            if hasattr(runner, "close"):
                runner.close()


def _hold_memory() -> list:
    """SPARSEBERT_BENCH_HOLD_GIB (set by bench_e2e --hold-gib): arrays of 64 MiB, every page
    written, held for the life of the process, as a server that holds much else would."""
    gib = float(os.environ.get("SPARSEBERT_BENCH_HOLD_GIB", "0") or 0)
    if gib <= 0:
        return []
    chunk = 64 << 20
    return [np.ones(chunk // 8) for _ in range(int(gib * (1 << 30)) // chunk)]


if __name__ == "__main__":
    _HELD = _hold_memory()
    Worker().serve()
