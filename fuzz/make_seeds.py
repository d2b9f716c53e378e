"""Write the format-1.6 seed files of the file harnesses to ``fuzz/seeds/`` (run from the repository root:
``python fuzz/make_seeds.py``; the files are committed, so the corpus does not change when the writer's
choices do).

The conformance vectors hold one or two files per 1.5/1.6 feature; these seeds are whole small models as
``rdformat.save`` writes them, so that the mutators start from files where the features occur together:
TAIL records (unindexed with at most 8 records, indexed with more), ZPACK directories with several groups,
DMETA metadata, bytesplit planes of modes 4 (shifted, in PACK groups) and 5 (joint), and lossy ``sq``/``dq``
groups. ``python fuzz/make_seeds.py --check`` prints which features each seed holds.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
MAX_SEED = 1 << 16  # the fuzzers' input limit


def _weights(rng: np.random.Generator, shape: tuple[int, ...], scale: float, dtype) -> np.ndarray:
    """Trained-looking weights: normal values of one scale (so exponent planes are narrow)."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _bf16(a: np.ndarray) -> np.ndarray:
    import ml_dtypes  # noqa: PLC0415 - the bfloat16 numpy dtype (a test dependency)

    return a.astype(np.float32).astype(ml_dtypes.bfloat16)


def build() -> dict[str, bytes]:
    """The seed files by name (deterministic: fixed generator seeds)."""
    import rdformat  # noqa: PLC0415

    rng = np.random.default_rng(20261202)
    out: dict[str, bytes] = {}

    def save(name: str, tensors, **kw) -> None:
        buf = io.BytesIO()
        rdformat.save(tensors, buf, **kw)
        out[name] = buf.getvalue()

    # few records: an unindexed TAIL; one float32 and one float16 tensor, lossless (joint planes)
    save("tail_unindexed_f32.rdc", {"w": _weights(rng, (40, 24), 0.05, np.float32),
                                    "b": _weights(rng, (600,), 0.2, np.float16)},
         metadata={"model": "seed", "note": "few records"})
    # many tiny tensors of different scales: ZPACK with shifted exponent planes, DMETA, aliases
    many = {f"layer{i}.conv{j}.weight": _weights(rng, (4 + i, 3, 3), 0.02 * (1 + 3 * i) ** 1.5, np.float32)
            for i in range(6) for j in (1, 2)}
    many.update({f"layer{i}.bn1.bias": _weights(rng, (8,), 0.5, np.float32) for i in range(6)})
    many["stem.num_batches_tracked"] = np.array(7, np.int64)
    save("zpack_many_tiny.rdc", many, aliases={"head.weight": "layer0.conv1.weight"},
         metadata={"rdformat": {"source_format": "safetensors", "adapter_version": 1}, "arch": "tiny"})
    # more than 8 records: an indexed TAIL (TENSOR + CHUNK records of chunked tensors, SMALL records)
    big = {f"block{i}.weight": _weights(rng, (24, 32), 0.03 * (i + 1), np.float32) for i in range(5)}
    big.update({f"block{i}.bias": _weights(rng, (24,), 0.1, np.float32) for i in range(5)})
    save("tail_indexed_chunks.rdc", big, chunk_bytes=1024, aliases={"tied.weight": "block0.weight"})
    # one float32 tensor of one chunk (not packed: over 64 KiB would be, so a TENSOR + CHUNK pair via
    # chunk_bytes) whose exponent and top mantissa bits code jointly
    save("joint_f32_chunk.rdc", {"w": _weights(rng, (96, 64), 0.02, np.float32)}, chunk_bytes=1 << 14)
    # bfloat16 and float16 tensors, lossless: joint planes of 2-byte elements
    save("bf16_f16_joint.rdc", {"emb": _bf16(_weights(rng, (300, 16), 0.04, np.float32)),
                                "proj": _weights(rng, (64, 40), 0.07, np.float16),
                                "scale": _bf16(_weights(rng, (64,), 1.0, np.float32))})
    # lossy: sq and dq groups next to lossless ones
    lossy = {f"fc{i}.weight": _weights(rng, (48, 32), 0.05, np.float32) for i in range(4)}
    lossy["fc0.bias"] = _weights(rng, (48,), 0.1, np.float32)
    save("lossy_sq.rdc", lossy, bits=4.0, method="sq")
    save("lossy_dq.rdc", lossy, bits=3.0, method="dq")
    return {k: v for k, v in out.items() if len(v) <= MAX_SEED}


def features(data: bytes) -> list[str]:
    """The 1.5/1.6 features a seed holds, read with the fuzzer's own lenient parsers."""
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import packmut as P  # noqa: PLC0415
    import rdcfuzz as F  # noqa: PLC0415

    f = F.RdcFile.parse(data)
    names = {F.REC_TAIL: "TAIL", F.REC_ZPACK: "ZPACK", F.REC_PACK: "PACK", F.REC_DMETA: "DMETA",
             F.REC_SMALL: "SMALL", F.REC_TENSOR: "TENSOR", F.REC_INDEX: "INDEX"}
    found = [names[r.rtype] for r in f.records if r.rtype in names]
    for r in f.records:
        if r.rtype == F.REC_TAIL:
            parsed = F.parse_tail_lenient(r.payload[:-4])
            found.append(f"tail-entries={len(parsed[1]) if parsed else '?'}")
    for codec, dtype, count, chunk in P.coded_chunks(f):
        if codec == b"bytesplit" and dtype in F.ITEMSIZE:
            for p in F.parse_planes(chunk, count, F.ITEMSIZE[dtype]) or []:
                found.append(f"plane-{p[0]}" + (f"(dtype {dtype})" if p[0] == "joint" else ""))
        else:
            found.append(codec.decode("ascii", "replace"))
    return sorted(set(found))


def main() -> None:
    seeds = build()
    if "--check" not in sys.argv:
        SEEDS.mkdir(exist_ok=True)
        for name, data in seeds.items():
            (SEEDS / name).write_bytes(data)
    for name, data in seeds.items():
        print(f"{name:28s} {len(data):6d}  {' '.join(features(data))}")


if __name__ == "__main__":
    main()
