"""safetensors writer and reader for lorad's test generators and the float64 reference.

Plain NumPy, written from the format description in SPEC-HF.md section A (not from our C reader):

  [u64 LE N][N bytes JSON header, right-padded with spaces to a multiple of 8][byte buffer]

The writer reproduces the reference (Rust) writer's layout: tensors sorted by dtype alignment
descending, then by name; offsets contiguous from 0; "__metadata__" first in the header, then the
tensors in data order; compact JSON. Only F32, F16 and BF16 are written; the reader also accepts
F64 (handy for tests) and refuses everything else with a message naming the tensor.

BF16 is produced from F32 by round-to-nearest-even on the bit pattern (what torch does for
.to(torch.bfloat16)); NaN stays NaN.
"""

import json
import os
import struct

import numpy as np

# Rank = position in the Rust `Dtype` enum (increasing alignment); the writer sorts by it descending.
_DTYPE_RANK = {"BOOL": 0, "U8": 1, "I8": 2, "F8_E5M2": 3, "F8_E4M3": 4, "I16": 5, "U16": 6,
               "F16": 7, "BF16": 8, "I32": 9, "U32": 10, "F32": 11, "F64": 12, "I64": 13, "U64": 14}
_DTYPE_SIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER_SIZE = 100_000_000


def f32_to_bf16_bits(a):
    """float array -> uint16 bf16 bit patterns, round-to-nearest-even (NaN kept as a quiet NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    if nan.any():
        rounded = rounded.copy()
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(bits):
    """uint16 bf16 bit patterns -> float32 (bits placed in the high half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(a, dtype):
    """The float32 values a tensor has after being stored as `dtype` (F32, F16, BF16)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.copy()
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a)).reshape(a.shape)
    raise ValueError("unsupported dtype %r" % dtype)


def _encode(a, dtype):
    a = np.asarray(a)
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F64":
        return np.ascontiguousarray(a, dtype="<f8").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a.astype(np.float32), dtype="<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError("unsupported dtype %r" % dtype)


def serialize(tensors, metadata=None):
    """tensors: dict name -> (np.ndarray, dtype str). Returns the file bytes."""
    if metadata is None:
        metadata = {"format": "pt"}
    items = []
    for name, (arr, dtype) in tensors.items():
        if dtype not in _DTYPE_SIZE:
            raise ValueError("tensor %r: unsupported dtype %r" % (name, dtype))
        items.append((name, np.asarray(arr), dtype))
    items.sort(key=lambda it: (-_DTYPE_RANK[it[2]], it[0]))
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs, off = [], 0
    for name, arr, dtype in items:
        blob = _encode(arr, dtype)
        assert len(blob) == arr.size * _DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": [int(d) for d in arr.shape],
                        "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def save_file(tensors, path, metadata=None):
    data = serialize(tensors, metadata)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def save_sharded(tensors, folder, n_shards, metadata=None):
    """Write n_shards files model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
    Tensors keep the caller's (state-dict) order and are cut into shards of similar byte size,
    the way transformers' shard_checkpoint does it."""
    names = list(tensors.keys())
    sizes = [np.asarray(tensors[n][0]).size * _DTYPE_SIZE[tensors[n][1]] for n in names]
    total = sum(sizes)
    target = total / n_shards
    shards, cur, acc = [], [], 0
    for n, s in zip(names, sizes):
        if cur and acc + s > target * (len(shards) + 1) and len(shards) < n_shards - 1:
            shards.append(cur)
            cur = []
        cur.append(n)
        acc += s
    shards.append(cur)
    while len(shards) < n_shards:  # tiny models: split the largest shard
        big = max(range(len(shards)), key=lambda i: len(shards[i]))
        h = len(shards[big]) // 2
        shards[big:big + 1] = [shards[big][:h], shards[big][h:]]
    weight_map = {}
    for i, group in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, n_shards)
        save_file({n: tensors[n] for n in group}, os.path.join(folder, fname), metadata)
        for n in group:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


class FormatError(ValueError):
    pass


def parse(data, what="safetensors"):
    """Strict parse of file bytes. Returns (metadata dict or None, {name: (dtype, shape, raw bytes)})."""
    if len(data) < 8:
        raise FormatError("%s: file shorter than the 8-byte header length" % what)
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_SIZE or 8 + n > len(data):
        raise FormatError("%s: header length %d is too large for a %d-byte file" % (what, n, len(data)))
    raw = data[8:8 + n]
    if not raw.startswith(b"{"):
        raise FormatError("%s: header does not start with '{'" % what)
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" "),
                            object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError("%s: header is not valid JSON: %s" % (what, e))
    meta = header.pop("__metadata__", None)
    entries = []
    for name, info in header.items():
        dtype = info.get("dtype")
        if dtype not in _DTYPE_SIZE:
            raise FormatError("%s: tensor %r has unsupported dtype %r" % (what, name, dtype))
        shape = [int(d) for d in info["shape"]]
        b, e = (int(x) for x in info["data_offsets"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPE_SIZE[dtype]
        if e - b != nbytes:
            raise FormatError("%s: tensor %r spans %d bytes, shape %s needs %d"
                              % (what, name, e - b, shape, nbytes))
        entries.append((b, e, name, dtype, shape))
    entries.sort()
    pos = 0
    for b, e, name, _, _ in entries:
        if b != pos:
            raise FormatError("%s: tensor %r starts at %d, expected %d (hole or overlap)"
                              % (what, name, b, pos))
        pos = e
    if 8 + n + pos != len(data):
        raise FormatError("%s: data ends at %d but the file has %d bytes" % (what, 8 + n + pos, len(data)))
    base = 8 + n
    return meta, {name: (dtype, shape, data[base + b:base + e]) for b, e, name, dtype, shape in entries}


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise FormatError("duplicate key %r in header" % k)
        d[k] = v
    return d


def decode(dtype, shape, raw):
    """Raw little-endian bytes -> float64 array of the stored values."""
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif dtype == "F64":
        a = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    elif dtype == "BF16":
        a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2")).astype(np.float64)
    else:
        raise FormatError("unsupported dtype %r" % dtype)
    return a.reshape(shape)


def load_file(path):
    """{name: float64 ndarray} and {name: dtype} of one safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    _, entries = parse(data, os.path.basename(path))
    arrays = {n: decode(dt, sh, raw) for n, (dt, sh, raw) in entries.items()}
    dtypes = {n: dt for n, (dt, _, _) in entries.items()}
    return arrays, dtypes


def load_folder(folder, stem="model"):
    """Load <stem>.safetensors, or the shards named by <stem>.safetensors.index.json."""
    single = os.path.join(folder, stem + ".safetensors")
    index = single + ".index.json"
    if os.path.exists(single):
        return load_file(single)
    if not os.path.exists(index):
        raise FileNotFoundError("%s: neither %s.safetensors nor its index" % (folder, stem))
    with open(index) as f:
        wm = json.load(f)["weight_map"]
    arrays, dtypes = {}, {}
    for shard in sorted(set(wm.values())):
        a, d = load_file(os.path.join(folder, shard))
        for n in a:
            if wm.get(n) != shard:
                raise FormatError("%s: tensor %r not mapped to this shard by the index" % (shard, n))
        arrays.update(a)
        dtypes.update(d)
    missing = set(wm) - set(arrays)
    if missing:
        raise FormatError("index names tensors missing from the shards: %s" % sorted(missing)[:5])
    return arrays, dtypes
