"""Hostile inputs: any bytes or any YAML document as a recipe, any bytes (or a well-formed wrapper with random content)
as a checkpoint give a valid result or an ``EdgekitError``, never another exception.

Every fuzzer is bounded and derandomized (same examples on every run, so CI is reproducible); together they take
well under a minute on two cores.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError
from faults.tiny import TINY

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)

_DIR = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))


def _write(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _only_edgekit_errors(fn, *args):
    """Call ``fn``: a result or an ``EdgekitError`` with a one-line message; anything else fails the test."""
    try:
        return fn(*args)
    except EdgekitError as exc:
        assert "\n" not in str(exc).strip() or str(exc).count("\n") < 3, str(exc)
        return None


# --- recipes ------------------------------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20),
                     st.sampled_from(["yolo", "clip", "vlm", "onnx", "onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "fuse_conv_bn",
                                      "${EDGEKIT_ASSETS}/x", "${NOPE}", "~", "", "nan", "-1", "1e400"]))
_keys = st.one_of(st.text(max_size=10), st.sampled_from(["name", "model", "export", "quantization", "targets", "evaluation", "benchmark", "budgets",
                                                          "family", "weights", "input_size", "batch", "passes", "calibration", "images", "count",
                                                          "dataset", "annotations", "max_drop", "keep_float", "op_types", "nodes", "clip", "vlm",
                                                          "openvino", "tensorrt", "litert", "backend", "precision", "accuracy_control"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


def _mutate(data, path: list, value):
    """``data`` with the node at ``path`` (keys/indices, clipped to what exists) replaced by ``value``."""
    data = copy.deepcopy(data)
    node = data
    for step in path[:-1]:
        children = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not children:
            break
        key = children[step % len(children)]
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        node = node[key]
    if isinstance(node, dict):
        keys = list(node)
        node[keys[path[-1] % len(keys)] if path[-1] % 3 else f"k{path[-1]}"] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return data


def _load(data: bytes):
    from edgekit.recipe import load_recipe

    return _only_edgekit_errors(load_recipe, _write("recipe.yaml", data))


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_as_a_recipe(data):
    _load(data)


@FUZZ
@given(st.binary(max_size=64))
def test_valid_recipe_with_random_bytes_spliced_in(junk):
    text = yaml.safe_dump(TINY).encode()
    cut = len(junk) * 7 % len(text)
    _load(text[:cut] + junk + text[cut:])


@FUZZ
@given(_values)
def test_any_yaml_document_as_a_recipe(doc):
    _load(yaml.safe_dump(doc).encode())


@settings(FUZZ, max_examples=150)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=4), _values)
def test_valid_recipe_with_one_subtree_replaced(path, value):
    _load(yaml.safe_dump(_mutate(TINY, path, value)).encode())


@pytest.mark.parametrize("text, needle", [
    (b"name: \xff\xfe tiny\n", "not UTF-8"),
    (b"[" * 5000, "nested too deeply"),
    (b"a: &a [*a]\n", "refers to itself"),
    (b"a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "aliases"),
    (b"name: x\nmodel: {}\ntargets: 5\n", "targets"),
])
def test_hostile_recipe_documents(text, needle):
    from edgekit.recipe import load_recipe

    with pytest.raises(EdgekitError, match=needle):
        load_recipe(_write("hostile.yaml", text))


def test_non_utf8_recipe_on_the_command_line(tmp_path):
    from conftest import edgekit

    from faults.tiny import assert_one_line_error

    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(yaml.safe_dump(TINY).encode() + b"# caf\xe9\n")
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "run"), "latin1.yaml", "not UTF-8")


# --- checkpoints --------------------------------------------------------------------------------------------------


def _yolo(path: Path):
    from edgekit.models.yolo.checkpoint import load_checkpoint

    return _only_edgekit_errors(load_checkpoint, path)


def _clip(path: Path):
    from edgekit.models.clip.checkpoint import _read_weights

    return _only_edgekit_errors(_read_weights, path)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _safetensors(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".pt", ".safetensors"]))
@example(b"a", ".pt")  # torch's weights-only unpickler: IndexError (pop from an empty stack)
@example(b"K", ".pt")  # IndexError (BININT1 with no byte)
@example(b"M", ".pt")  # struct.error (BININT2 short)
@example(b"J", ".pt")  # struct.error (BININT short)
def test_any_bytes_as_a_checkpoint(data, suffix):
    path = _write(f"random{suffix}", data)
    _yolo(path)
    _clip(path)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_zip_checkpoint_with_random_pickle(data, with_storage):
    """A valid zip with ``archive/data.pkl`` holding random bytes (and maybe a storage record) passes the magic checks."""
    members = {"archive/data.pkl": data}
    if with_storage:
        members["archive/data/0"] = data[:16]
    path = _write("zipped.pt", _zip(members))
    _yolo(path)
    _clip(path)


_pickled = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10,
)


@FUZZ
@given(_pickled, st.sampled_from(["model", "ema", "state_dict", None]), st.integers(0, 3))
def test_zip_checkpoint_with_random_python_objects(obj, key, protocol):
    """A well-formed pickle of random plain objects (optionally under a checkpoint key) in a zip checkpoint."""
    payload = {key: obj} if key else obj
    path = _write("objects.pt", _zip({"archive/data.pkl": pickle.dumps(payload, protocol=protocol)}))
    _yolo(path)
    _clip(path)


def _evil_pickle(module: str, name: str, arg) -> bytes:
    """A pickle that calls ``module.name(arg)`` when loaded by an unrestricted unpickler."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps((arg,), protocol=2)[2:-1] + b"R."


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "check_output"),
                                          ("torch._utils", "_rebuild_tensor_v2"), ("copyreg", "_reconstructor"), ("collections", "OrderedDict")])
def test_pickled_calls_are_never_executed(tmp_path, module, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(_zip({"archive/data.pkl": _evil_pickle(module, name, f"touch {marker}")}))
    _yolo(path)
    _clip(path)
    assert not marker.exists()


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**66), 2**66), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
_tensor_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "BF16", "F64", "X9", ""]),
    "shape": st.lists(st.integers(-2, 2**40), max_size=4),
    "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3),
})


@FUZZ
@given(st.dictionaries(st.text(max_size=10), st.one_of(_tensor_entry, _json), max_size=3),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["yaml", "names", "x"]), st.one_of(st.text(max_size=30), _json.map(json.dumps)), max_size=3)),
       st.binary(max_size=64))
def test_safetensors_with_random_header(entries, metadata, body):
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    path = _write("random_header.safetensors", _safetensors(json.dumps(header).encode(), body))
    _yolo(path)
    _clip(path)


_arch_number = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 4096, 10**9]))


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(["nc", "depth_multiple", "width_multiple", "max_channels", "backbone", "head", "anchors", "layer"]),
       st.one_of(_arch_number, _json))
def test_yolo_architecture_table_with_one_random_value(key, value):
    """The real YOLOv5n table with one key (or one layer) replaced: a model, or an EdgekitError, never an allocation storm."""
    from edgekit.models.yolo.build import build_model

    arch = copy.deepcopy(_yolov5n_arch())
    if key == "layer":
        arch["backbone"][1] = value
    else:
        arch[key] = value

    _only_edgekit_errors(build_model, arch, None, Path("fuzz.safetensors"))


def _yolov5n_arch() -> dict:
    global _ARCH
    if _ARCH is None:
        from conftest import WEIGHTS_ST
        from safetensors import safe_open

        with safe_open(str(WEIGHTS_ST), framework="pt") as handle:
            _ARCH = json.loads(handle.metadata()["yaml"])
    return _ARCH


_ARCH = None
