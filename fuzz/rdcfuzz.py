"""Structure-aware mutation of .rdc files, codec chunks and ANS blocks, shared by the atheris
harnesses in this folder and by ``tests/test_fuzz_smoke.py`` (which needs no atheris).

A file is parsed leniently into its 16-byte header, a list of records and trailing bytes. Mutations
change record *fields* (types, flags, declared lengths, tensor dims/counts/dtype/codec/config, chunk
index/padding/data, bytesplit planes, frequency tables, ANS lane counts and words, index entries,
END offsets...) and then the file is serialised again with every CRC recomputed (header CRC and
payload CRC, zlib CRC-32) and, by default, the INDEX and END records rebuilt to match, so that the
mutation reaches the code behind the checksums. A few mutations break a CRC on purpose.

Every function takes a ``numpy.random.Generator``: the same seed gives the same mutations.

One module on purpose (over 500 lines): the lenient file model, its mutations and its re-serialisation
must agree field by field; split, each half would need the other's record layouts.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
MAX_INPUT = 1 << 16  # inputs stay below 64 KB (a hang is > 1 s on such an input)

MAGIC = b"\x89RDC\r\n\x1a\n"
REC_META, REC_GRAPH, REC_TENSOR, REC_CHUNK, REC_ALIAS, REC_INDEX, REC_END, REC_SMALL = range(1, 9)
REC_ZMETA, REC_ZGRAPH = 9, 10  # format 1.2: zlib-compressed META / GRAPH (indexed as META / GRAPH)
REC_XGRAPH = 16  # format 1.7: LZMA2-compressed GRAPH (indexed as GRAPH)
REC_LAYER = 12  # format 1.3: pieces of layered tensors (indexed as one region, entry kind 6)
REC_PACK = 11  # format 1.3: several small tensors in one record (indexed by one unnamed entry, kind 5)
REC_DMETA = 13  # format 1.5: META deflated with the preset dictionary (indexed as META)
REC_ZPACK = 14  # format 1.5: a PACK record with a deflated directory (indexed like PACK, kind 5)
REC_TAIL = 15  # format 1.6: compact index + end of file in one record (rebuilt like INDEX + END)
_HEAD = struct.Struct("<HHQ")
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 4095, 4096,
               65535, 65536, (1 << 20), (1 << 24) - 1, 1 << 24, (1 << 26), (1 << 28), (1 << 28) + 1, (1 << 31) - 1,
               1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, 1 << 40, 1 << 53, 1 << 62, (1 << 63) - 1, 1 << 63,
               (1 << 64) - 2, (1 << 64) - 1]
CONFIGS = [b"{}", b'{"transform":"rotl1"}', b'{"transform":"none"}', b'{"transform":"rotl2"}',
           b'{"transform":null}', b'{"transform":1}', b'{"transform":"none","x":1}', b"[]", b'"s"', b"1e999",
           b"NaN", b'{"a":', b"\xff\xfe", b"", b"[" * 3000, b'{"a":' * 2000, b"1" * 5000,
           b'{"transform":"none","transform":"rotl1"}', b'{"bits":4}', b'{"step":0.5,"groups":[]}']
META_TEXTS = [b"{}", b'{"a":1}', b"[1,2]", b"null", b"{", b"\xff", b"[" * 5000, b'{"x":' + b"9" * 5000 + b"}",
              b'{"a":NaN}', "{\"\u00fc\":\"\u00df\"}".encode(), b""]
CODEC_IDS = [b"raw", b"bytesplit", b"sq", b"dq", b"", b"RAW", b"x" * 65, b"bytesplit\x00", b"\xff"]


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def rand_u64(rng: np.random.Generator, around: int | None = None) -> int:
    """An interesting 64-bit value, a small change of ``around``, or a random one."""
    r = rng.random()
    if around is not None and r < 0.4:
        return (around + int(rng.integers(-3, 4))) % (1 << 64)
    if r < 0.85:
        return pick(rng, INTERESTING)
    return int(rng.integers(0, 1 << 63, dtype=np.uint64)) * int(rng.integers(1, 3))


def mutate_bytes(rng: np.random.Generator, data: bytes, max_len: int = MAX_INPUT) -> bytes:
    """Generic byte-level mutation (flip, set, insert, delete, duplicate, truncate, extend)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(8))
        n = len(b)
        if op == 0 and n:
            b[int(rng.integers(n))] ^= 1 << int(rng.integers(8))
        elif op == 1 and n:
            b[int(rng.integers(n))] = pick(rng, [0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))])
        elif op == 2:
            at = int(rng.integers(n + 1))
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif op == 3 and n:
            at = int(rng.integers(n))
            del b[at : at + int(rng.integers(1, 9))]
        elif op == 4 and n:
            at = int(rng.integers(n))
            k = int(rng.integers(1, 17))
            b[at:at] = b[at : at + k]
        elif op == 5 and n:
            del b[int(rng.integers(n + 1)) :]
        elif op == 6:
            b += rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        elif op == 7 and n >= 4:
            at = int(rng.integers(n - 3))
            b[at : at + 4] = struct.pack("<I", rand_u64(rng) & 0xFFFFFFFF)
    return bytes(b[:max_len])


# ------------------------------------------------------------------------------------------------
# varints and frequency tables (lenient parsing so that broken tables can be mutated further)


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(b: bytes, pos: int) -> tuple[int, int]:
    v = 0
    for k in range(5):
        if pos + k >= len(b):
            raise ValueError("eof")
        v |= (b[pos + k] & 0x7F) << (7 * k)
        if b[pos + k] < 0x80:
            return v, pos + k + 1
    raise ValueError("long")


class Table:
    """A frequency table as editable fields: precision q, symbols, freqs."""

    def __init__(self, q: int, syms: list[int], freqs: list[int]) -> None:
        self.q, self.syms, self.freqs = q, syms, freqs

    @classmethod
    def parse(cls, b: bytes, pos: int) -> tuple["Table", int]:
        q = b[pos]
        m, pos = read_varint(b, pos + 1)
        if m > 70000:
            raise ValueError("m")
        gaps, freqs = [], []
        for _ in range(m):
            g, pos = read_varint(b, pos)
            gaps.append(g)
        for _ in range(m):
            f, pos = read_varint(b, pos)
            freqs.append(f + 1)
        syms, s = [], -1
        for g in gaps:
            s = s + g + 1
            syms.append(s)
        return cls(q, syms, freqs), pos

    def to_bytes(self) -> bytes:
        out = bytearray([self.q & 0xFF]) + varint(len(self.syms))
        prev = -1
        for s in self.syms:
            out += varint(max(0, s - prev - 1))
            prev = s
        for f in self.freqs:
            out += varint(max(0, f - 1))
        return bytes(out)

    def fix_sum(self) -> None:
        """Make the frequencies sum to 2**q when possible (so later checks are reached)."""
        if not 1 <= self.q <= 16 or not self.freqs or len(self.freqs) > (1 << self.q):
            return
        total = 1 << self.q
        self.freqs = [max(1, min(f, total)) for f in self.freqs]
        diff = total - sum(self.freqs)
        i = 0
        while diff and i < 4 * len(self.freqs) + 4:
            j = i % len(self.freqs)
            step = diff if diff > 0 else max(diff, 1 - self.freqs[j])
            self.freqs[j] += step
            diff -= step
            i += 1

    def mutate(self, rng: np.random.Generator) -> None:
        op = int(rng.integers(7))
        if op == 0:
            self.q = pick(rng, [0, 1, 2, 8, 12, 14, 15, 16, 17, 24, 255])
        elif op == 1 and self.syms:
            i = int(rng.integers(len(self.syms)))
            self.syms[i] = pick(rng, [0, 255, 256, (1 << 31) - 1, 1 << 31, self.syms[i] + 1])
            self.syms.sort()
        elif op == 2 and self.freqs:
            i = int(rng.integers(len(self.freqs)))
            self.freqs[i] = pick(rng, [0, 1, 2, 1 << self.q if self.q < 40 else 1, self.freqs[i] + 1, 1 << 32])
        elif op == 3:  # add or drop a symbol
            if self.syms and rng.random() < 0.5:
                i = int(rng.integers(len(self.syms)))
                del self.syms[i], self.freqs[i]
            else:
                self.syms.append((self.syms[-1] + 1) if self.syms else 0)
                self.freqs.append(1)
        elif op == 4:  # a single-symbol table
            self.syms, self.freqs = self.syms[:1] or [0], [1 << min(self.q, 16)]
        elif op == 5:  # a uniform table over many symbols
            m = pick(rng, [2, 3, 255, 256, 257])
            q = max(1, min(16, self.q))
            self.syms = list(range(m))
            self.freqs = [1] * m
            self.q = q
        if rng.random() < 0.7:
            self.fix_sum()


def rebuild_block(rng: np.random.Generator, table: Table, count: int, lanes: int | None = None) -> bytes | None:
    """A *valid* ANS block of ``count`` random symbols of ``table`` (None if the table is invalid)."""
    from rdformat.entropy import FrequencyTable, ans

    try:
        ft = FrequencyTable(table.q, table.syms, table.freqs)
    except Exception:  # noqa: BLE001 - an invalid table has no valid block
        return None
    if count > 1 << 16:
        return None
    p = ft.freqs / ft.freqs.sum()
    values = rng.choice(ft.symbols, size=count, p=p) if count else np.zeros(0, np.uint32)
    if lanes is not None and count:
        lanes = max(1, min(lanes, count))
    return ans.encode(values, ft, lanes=lanes)


def mutate_block(rng: np.random.Generator, block: bytes, count: int) -> bytes:
    """Mutate an ANS block's fields: lane count, lane lengths, words."""
    if len(block) < 4 or rng.random() < 0.15:
        return mutate_bytes(rng, block)
    lanes = struct.unpack_from("<I", block)[0]
    op = int(rng.integers(7))
    b = bytearray(block)
    if op == 0:
        b[0:4] = struct.pack("<I", pick(rng, [0, 1, 2, lanes - 1 if lanes else 0, lanes + 1, count, count + 1,
                                              (1 << 32) - 1, 1 << 31]) & 0xFFFFFFFF)
    elif op == 1 and lanes and len(b) >= 4 + 4 * lanes and lanes < 1 << 20:
        j = int(rng.integers(lanes))
        old = struct.unpack_from("<I", b, 4 + 4 * j)[0]
        b[4 + 4 * j : 8 + 4 * j] = struct.pack("<I", pick(rng, [0, 1, old + 1, max(old - 1, 0), (1 << 32) - 1,
                                                                 1 << 30]) & 0xFFFFFFFF)
    elif op == 2 and len(b) > 4:  # flip a bit in the words
        i = int(rng.integers(4, len(b)))
        b[i] ^= 1 << int(rng.integers(8))
    elif op == 3 and len(b) >= 8:  # a zero word at the end of the data
        b[-4:] = bytes(4)
    elif op == 4:  # add or remove one word, keeping the lane lengths consistent
        if lanes and len(b) >= 4 + 4 * lanes and lanes < 1 << 20:
            j = int(rng.integers(lanes))
            old = struct.unpack_from("<I", b, 4 + 4 * j)[0]
            if rng.random() < 0.5 and len(b) >= 8 + 4 * lanes:
                b[4 + 4 * j : 8 + 4 * j] = struct.pack("<I", max(old - 1, 0))
                del b[-4:]
            else:
                b[4 + 4 * j : 8 + 4 * j] = struct.pack("<I", (old + 1) & 0xFFFFFFFF)
                b += struct.pack("<I", int(rng.integers(1, 1 << 32)))
    elif op == 5:
        del b[int(rng.integers(len(b) + 1)) :]
    else:
        b += struct.pack("<I", int(rng.integers(0, 1 << 32)))
    return bytes(b)


# ------------------------------------------------------------------------------------------------
# bytesplit chunk data as planes


def _read_segments(data: bytes, pos: int) -> tuple[list[list[int]], int]:
    """The ``(length, shift)`` segments of a mode 4/5 plane, leniently (at most 70000 of them)."""
    s, pos = read_varint(data, pos)
    if s > 70000:
        raise ValueError("segments")
    segs = []
    for _ in range(s):
        n, pos = read_varint(data, pos)
        segs.append([n, data[pos]])
        pos += 1
    return segs, pos


def segments_bytes(segs: list[list[int]]) -> bytes:
    return varint(len(segs)) + b"".join(varint(max(0, n)) + bytes([sh & 0xFF]) for n, sh in segs)


def parse_joint_table(data: bytes, pos: int, t: int) -> tuple[Table, list[list[int]], int]:
    """A joint table (spec 5.2, mode 5): the top-symbol table, then per top symbol ``2**t - 1`` varints."""
    tops, pos = Table.parse(data, pos)
    per = (1 << t) - 1 if 1 <= t <= 7 else 0
    subs = []
    for _ in tops.syms:
        row = []
        for _j in range(per):
            g, pos = read_varint(data, pos)
            row.append(g)
        subs.append(row)
    return tops, subs, pos


def joint_table_bytes(tops: Table, subs: list[list[int]]) -> bytes:
    return tops.to_bytes() + b"".join(varint(max(0, g)) for row in subs for g in row)


def joint_symbols(tops: Table, subs: list[list[int]], t: int) -> Table | None:
    """The table of the joint symbols a reader derives from ``tops`` and ``subs`` (what the ANS block is coded
    with), or None where the joint table is invalid (a frequency over what is left of its top symbol's)."""
    if not 1 <= t <= 7:
        return None
    syms, freqs = [], []
    for x, f, row in zip(tops.syms, tops.freqs, subs):
        left = f
        for r in range(1 << t):
            g = row[r] if r < len(row) else left
            if g > left:
                return None
            left -= g
            if g:
                syms.append((x << t) | r)
                freqs.append(g)
    return Table(tops.q, syms, freqs)


def low_bytes(count: int, t: int) -> int:
    """Bytes of a joint plane's packed low bits: ``ceil(count * (8 - t) / 8)``."""
    return -(-count * (8 - t) // 8) if 0 <= t <= 8 else 0


def parse_planes(data: bytes, count: int, width: int) -> list | None:
    """Planes of a bytesplit chunk, None if nothing parses. Each is a list:
    ``['raw', bytes]`` | ``['const', int]`` | ``['ans' or 'pairs', Table, blocklen, block]`` |
    ``['shifted', segs, Table, blocklen, block]`` (mode 4: ``segs`` = ``[[length, shift], ...]``) |
    ``['joint', t, segs, tops, subs, blocklen, block, low]`` (mode 5, standing for planes w-2 and w-1: ``tops``
    the top-symbol Table, ``subs`` its per-symbol joint frequencies, ``low`` the packed low bits) |
    ``['junk', bytes]`` (whatever does not parse)."""
    planes, pos, k = [], 0, 0
    try:
        while k < width:
            mode = data[pos]
            if mode == 0:
                planes.append(["raw", data[pos + 1 : pos + 1 + count]])
                pos += 1 + count
            elif mode == 1:
                planes.append(["const", data[pos + 1]])
                pos += 2
            elif mode in (2, 3):
                table, at = Table.parse(data, pos + 1)
                n = struct.unpack_from("<Q", data, at)[0]
                at += 8
                planes.append(["ans" if mode == 2 else "pairs", table, n, data[at : at + n]])
                pos = at + n
            elif mode == 4:
                segs, at = _read_segments(data, pos + 1)
                table, at = Table.parse(data, at)
                n, at = read_varint(data, at)
                planes.append(["shifted", segs, table, n, data[at : at + n]])
                pos = at + n
            elif mode == 5:
                t = data[pos + 1]
                segs, at = _read_segments(data, pos + 2)
                tops, subs, at = parse_joint_table(data, at, t)
                n, at = read_varint(data, at)
                block = data[at : at + n]
                at += n
                low = data[at : at + low_bytes(count, t)]
                planes.append(["joint", t, segs, tops, subs, n, block, low])
                pos = at + len(low)
                k += 1  # stands for two planes
            else:
                break
            k += 1
    except (IndexError, ValueError, struct.error):
        pass
    if not planes:
        return None
    if pos < len(data):
        planes.append(["junk", data[pos:]])
    return planes


def build_planes(planes: list) -> bytes:
    out = bytearray()
    for p in planes:
        if p[0] == "raw":
            out += b"\x00" + p[1]
        elif p[0] == "const":
            out += bytes([1, p[1] & 0xFF])
        elif p[0] in ("ans", "pairs"):
            out += (b"\x02" if p[0] == "ans" else b"\x03") + p[1].to_bytes() + struct.pack("<Q", p[2] % (1 << 64)) + p[3]
        elif p[0] == "shifted":
            out += b"\x04" + segments_bytes(p[1]) + p[2].to_bytes() + varint(p[3] % (1 << 64)) + p[4]
        elif p[0] == "joint":
            out += bytes([5, p[1] & 0xFF]) + segments_bytes(p[2]) + joint_table_bytes(p[3], p[4]) \
                + varint(p[5] % (1 << 64)) + p[6] + p[7]
        else:
            out += p[1]
    return bytes(out)


def rand_segments(rng: np.random.Generator, count: int) -> list[list[int]]:
    """Valid segments for ``count`` elements: 1..8 of them, lengths summing to ``count``, shifts 0..254."""
    if count < 1:
        return [[1, 0]]
    s = int(rng.integers(1, min(count, 8) + 1))
    cuts = sorted(rng.choice(np.arange(1, count), size=s - 1, replace=False).tolist()) if s > 1 else []
    bounds = [0] + cuts + [count]
    return [[bounds[i + 1] - bounds[i], pick(rng, [0, 0, 1, 127, 128, 200, 254, int(rng.integers(255))])]
            for i in range(s)]


def mutate_segments(rng: np.random.Generator, segs: list[list[int]], count: int) -> list[list[int]]:
    """Segment edits: shift 255 or another, a length of 0 / past ``count`` / off by one (the sum then wrong,
    or kept right by the neighbour), split, merge, drop, too many segments, a fresh valid set."""
    segs = [list(s) for s in segs] or [[count, 0]]
    i = int(rng.integers(len(segs)))
    op = int(rng.integers(9))
    if op == 0:
        segs[i][1] = pick(rng, [255, 254, 0, 1, (segs[i][1] + 1) % 256])
    elif op == 1:
        segs[i][0] = pick(rng, [0, 1, count, count + 1, segs[i][0] + 1, max(segs[i][0] - 1, 0), 1 << 32, 1 << 62])
    elif op == 2 and len(segs) > 1:  # move one element between neighbours: still sums to count
        j = i + 1 if i + 1 < len(segs) else i - 1
        d = pick(rng, [1, -1, segs[j][0]])
        segs[i][0] += d
        segs[j][0] -= d
    elif op == 3 and segs[i][0] > 1:  # split
        a = int(rng.integers(1, segs[i][0]))
        segs[i:i + 1] = [[a, segs[i][1]], [segs[i][0] - a, int(rng.integers(255))]]
    elif op == 4 and len(segs) > 1:  # merge into the previous one (same shift: what a writer would merge)
        j = max(i, 1)
        segs[j - 1][0] += segs[j][0]
        del segs[j]
    elif op == 5:
        del segs[i]
    elif op == 6:  # more segments than elements (each of length 1, one too many)
        segs = [[1, int(rng.integers(255))] for _ in range(min(count + 1, 4096))]
    elif op == 7:
        segs = []
    else:
        segs = rand_segments(rng, count)
    return segs


def fresh_shifted(rng: np.random.Generator, count: int) -> list | None:
    """A valid mode-4 plane of ``count`` random exponent-like bytes (the library's own encoder)."""
    from rdformat.codecs import bytesplit as B

    if not 2 <= count <= 1 << 16:
        return None
    plane = rand_exponents(rng, count)
    segs = rand_segments(rng, count)
    data = B._encode_shifted_with(plane, [n for n, _ in segs], [s for _, s in segs], pick(rng, [10, 12, 14]))
    parsed = parse_planes(data, count, 1) if data else None
    return parsed[0] if parsed and parsed[0][0] == "shifted" else None


def rand_exponents(rng: np.random.Generator, count: int) -> np.ndarray:
    """Bytes like a weight tensor's exponent plane: a few neighbouring values, some zeros."""
    centre = int(rng.integers(1, 255))
    vals = np.clip(centre + rng.geometric(0.5, count) * rng.choice([-1, 1], count), 0, 255)
    vals[rng.random(count) < 0.05] = 0
    return vals.astype(np.uint8)


def fresh_joint(rng: np.random.Generator, count: int) -> list | None:
    """A valid mode-5 plane of ``count`` random elements (the library's own encoder, any budget)."""
    from rdformat.codecs import bytesplit as B

    if not 2 <= count <= 1 << 16:
        return None
    top = rand_exponents(rng, count)
    below = rng.integers(0, 256, count, dtype=np.uint8)
    segs = rand_segments(rng, count) if rng.random() < 0.5 else [[count, 0]]
    data = B._encode_joint(top, below, [tuple(s) for s in segs], 1 << 40)
    parsed = parse_planes(data, count, 2) if data else None
    return parsed[0] if parsed and parsed[0][0] == "joint" else None


def mutate_joint(rng: np.random.Generator, p: list, count: int) -> None:
    """Joint plane fields: bit count t, segments, top table, joint frequencies, ANS block (rebuilt valid for
    the derived joint table, or damaged), block length, packed low bits (length, padding bits)."""
    _, t, segs, tops, subs, n, block, low = p
    op = int(rng.integers(10))
    if op == 0:  # t: invalid, or another valid one (then the rows and low bits no longer match unless fixed)
        t = pick(rng, [0, 8, 255, 1, 2, 3, 7, (t % 7) + 1])
        if 1 <= t <= 7 and rng.random() < 0.6:
            subs = [(row + [0] * (1 << t))[: (1 << t) - 1] for row in subs]
            low = (low + bytes(low_bytes(count, t)))[: low_bytes(count, t)]
    elif op == 1:
        segs = mutate_segments(rng, segs, count)
    elif op == 2:
        tops.mutate(rng)
        subs = [(row if i < len(subs) else [0] * ((1 << t) - 1 if 1 <= t <= 7 else 0))
                for i, row in enumerate(subs + [[]] * max(0, len(tops.syms) - len(subs)))][: len(tops.syms)]
    elif op == 3 and subs:  # a joint frequency: over what is left, all of it, 0, huge
        row = pick(rng, subs)
        if row:
            i = int(rng.integers(len(row)))
            f = tops.freqs[subs.index(row)] if subs.index(row) < len(tops.freqs) else 1
            row[i] = pick(rng, [0, 1, f, f + 1, f - sum(row) + row[i], (1 << 32) - 1, 1 << 34])
    elif op == 4 and subs:  # a row too short or too long
        row = pick(rng, subs)
        if row and rng.random() < 0.5:
            row.pop()
        else:
            row.append(pick(rng, [0, 1]))
    elif op == 5:
        n = rand_u64(rng, around=n)
    elif op == 6:
        block = mutate_block(rng, block, count)
        if rng.random() < 0.8:
            n = len(block)
    elif op == 7:  # packed low bits: short, long, nonzero unused bits, random
        r = rng.random()
        if r < 0.3:
            low = low[:-1]
        elif r < 0.5:
            low = low + b"\x00"
        elif r < 0.8 and low:
            low = low[:-1] + bytes([low[-1] | 0x80 | (1 << int(rng.integers(8)))])
        else:
            low = rng.integers(0, 256, len(low), dtype=np.uint8).tobytes()
    # after most edits: a valid block for the (possibly changed) joint table, so the edit reaches the decoder
    if op in (1, 2, 3, 8) or rng.random() < 0.3:
        table = joint_symbols(tops, subs, t)
        blk = rebuild_block(rng, table, count, lanes=pick(rng, [None, 1, 2, 5, count])) if table else None
        if blk is not None:
            block, n = blk, len(blk)
    p[:] = ["joint", t, segs, tops, subs, n, block, low]


def mutate_shifted(rng: np.random.Generator, p: list, count: int) -> None:
    """Shifted plane fields: segments, table (then usually a valid block for it), block length, block."""
    _, segs, table, n, block = p
    op = int(rng.integers(5))
    if op == 0:
        segs = mutate_segments(rng, segs, count)
    elif op == 1:
        table.mutate(rng)
    elif op == 2:
        n = rand_u64(rng, around=n)
    elif op == 3:
        block = mutate_block(rng, block, count)
        if rng.random() < 0.8:
            n = len(block)
    if op in (0, 1, 4) and rng.random() < 0.7:
        blk = rebuild_block(rng, table, count, lanes=pick(rng, [None, 1, 3, count]))
        if blk is not None:
            block, n = blk, len(blk)
    p[:] = ["shifted", segs, table, n, block]


def mutate_planes(rng: np.random.Generator, data: bytes, count: int, width: int) -> bytes:
    """Mutate a bytesplit chunk plane by plane (mode, constant, raw length, table, block; the segments, bit
    count, joint table and low bits of modes 4 and 5)."""
    planes = parse_planes(data, count, width)
    if planes is None or rng.random() < 0.1:
        return mutate_bytes(rng, data)
    i = int(rng.integers(len(planes)))
    p = planes[i]
    op = int(rng.integers(7))
    if op == 0:  # change the plane mode
        new = pick(rng, ["raw", "const", "ans", "pairs", "shifted", "joint", "joint", "bad"])
        if new == "raw":
            p[:] = ["raw", rng.integers(0, 256, min(count, MAX_INPUT), dtype=np.uint8).tobytes()]
        elif new == "const":
            p[:] = ["const", int(rng.integers(256))]
        elif new in ("ans", "pairs"):
            t = Table(12, [0, 1, 7], [3000, 1000, 96]) if new == "ans" else Table(12, [0, 1, 256, 257, 1792],
                                                                                     [3000, 500, 500, 48, 48])
            n = count if new == "ans" else -(-count // 2)
            blk = rebuild_block(rng, t, n, lanes=int(rng.integers(1, 9)))
            p[:] = [new, t, len(blk or b""), blk or b""]
        elif new in ("shifted", "joint"):
            fresh = fresh_shifted(rng, count) if new == "shifted" else fresh_joint(rng, count)
            if fresh is None:
                return mutate_bytes(rng, data)
            p[:] = fresh
            # a joint plane stands for two: usually drop the next plane so that the count of planes stays
            # right (at plane w-2 the chunk is then valid), sometimes keep it (too many planes)
            if new == "joint" and i + 1 < len(planes) and planes[i + 1][0] != "junk" and rng.random() < 0.8:
                del planes[i + 1]
        else:
            p[:] = ["junk", bytes([pick(rng, [6, 7, 0x80, 0xFF])])]
    elif p[0] == "raw":
        n = len(p[1])
        p[1] = p[1][: max(0, n - 1)] if rng.random() < 0.5 else p[1] + b"\x00"
    elif p[0] == "const":
        p[1] = int(rng.integers(256))
    elif p[0] == "shifted":
        mutate_shifted(rng, p, count)
    elif p[0] == "joint":
        if op == 1 and rng.random() < 0.3:  # split it back into two planes, or move it to another plane
            if rng.random() < 0.5:
                planes.insert(i + 1, ["const", 0x3F])
            else:
                planes.insert(max(0, i - 1), planes.pop(i))
        else:
            mutate_joint(rng, p, count)
    elif p[0] in ("ans", "pairs"):
        n = count if p[0] == "ans" else -(-count // 2)
        if op == 1:
            p[1].mutate(rng)
            if rng.random() < 0.5:
                blk = rebuild_block(rng, p[1], n, lanes=pick(rng, [None, 1, 2, 5, n]))
                if blk is not None:
                    p[3], p[2] = blk, len(blk)
        elif op == 2:
            p[2] = rand_u64(rng, around=p[2])
        elif op == 3:
            p[3] = mutate_block(rng, p[3], n)
            if rng.random() < 0.8:
                p[2] = len(p[3])
        elif op == 4:
            blk = rebuild_block(rng, p[1], n, lanes=pick(rng, [None, 1, 3, n]))
            if blk is not None:
                p[3], p[2] = blk, len(blk)
        else:  # a non-canonical varint in the table
            raw = p[1].to_bytes()
            p[:] = ["junk", (b"\x02" if p[0] == "ans" else b"\x03") + raw[:1] + bytes([raw[1] | 0x80, 0]) + raw[2:]
                    + struct.pack("<Q", p[2]) + p[3]]
    else:
        p[1] = mutate_bytes(rng, p[1])
    if rng.random() < 0.1:  # drop or duplicate a plane
        i = int(rng.integers(len(planes)))
        if rng.random() < 0.5:
            del planes[i]
        else:
            planes.insert(i, list(planes[i]))
    return build_planes(planes)


# ------------------------------------------------------------------------------------------------
# records


class Record:
    """One record. ``length``/``head_crc``/``payload_crc`` None = computed when serialising;
    ``frozen`` = keep the payload as is (no index/END/padding fix-up)."""

    __slots__ = ("rtype", "flags", "payload", "length", "head_crc", "payload_crc", "frozen")

    def __init__(self, rtype: int, flags: int, payload: bytes) -> None:
        self.rtype, self.flags, self.payload = rtype, flags, payload
        self.length = self.head_crc = self.payload_crc = None
        self.frozen = False

    def copy(self) -> "Record":
        r = Record(self.rtype, self.flags, self.payload)
        r.length, r.head_crc, r.payload_crc, r.frozen = self.length, self.head_crc, self.payload_crc, self.frozen
        return r


def parse_tensor(p: bytes) -> dict | None:
    """TENSOR payload fields (raw bytes for strings), or None if it does not parse."""
    try:
        pos = 0
        n = struct.unpack_from("<H", p, pos)[0]
        name = p[2 : 2 + n]
        pos = 2 + n
        dtype, rank, flags = struct.unpack_from("<HBB", p, pos)
        pos += 4
        dims = list(struct.unpack_from(f"<{rank}Q", p, pos))
        pos += 8 * rank
        ce, cc = struct.unpack_from("<QQ", p, pos)
        pos += 16
        n = struct.unpack_from("<H", p, pos)[0]
        codec = p[pos + 2 : pos + 2 + n]
        pos += 2 + n
        n = struct.unpack_from("<I", p, pos)[0]
        cfg = p[pos + 4 : pos + 4 + n]
        pos += 4 + n
        if len(name) != struct.unpack_from("<H", p, 0)[0] or pos > len(p):
            return None
        return dict(name=name, dtype=dtype, flags=flags, dims=dims, ce=ce, cc=cc, codec=codec, cfg=cfg,
                    extra=p[pos:], rank=None)
    except struct.error:
        return None


def build_tensor(f: dict) -> bytes:
    rank = len(f["dims"]) if f.get("rank") is None else f["rank"]
    return (struct.pack("<H", len(f["name"]) & 0xFFFF) + f["name"]
            + struct.pack("<HBB", f["dtype"] & 0xFFFF, rank & 0xFF, f["flags"] & 0xFF)
            + b"".join(struct.pack("<Q", d % (1 << 64)) for d in f["dims"])
            + struct.pack("<QQ", f["ce"] % (1 << 64), f["cc"] % (1 << 64))
            + struct.pack("<H", len(f["codec"]) & 0xFFFF) + f["codec"]
            + struct.pack("<I", len(f["cfg"])) + f["cfg"] + f["extra"])


def numel(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


ITEMSIZE = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 2, 11: 2, 12: 4, 13: 8, 14: 1, 15: 1}


def str16(b: bytes) -> bytes:
    return struct.pack("<H", len(b) & 0xFFFF) + b


class RdcFile:
    """A leniently parsed file: header bytes, records, trailing bytes."""

    def __init__(self, header: bytes, records: list[Record], tail: bytes) -> None:
        self.header, self.records, self.tail = header, records, tail
        self.header_crc: int | None = None  # None = computed

    @classmethod
    def parse(cls, data: bytes) -> "RdcFile":
        header = data[:16]
        recs, pos = [], 16
        while pos + 20 <= len(data):
            rtype, flags, length = _HEAD.unpack_from(data, pos)
            if pos + 20 + length > len(data):
                break
            recs.append(Record(rtype, flags, data[pos + 16 : pos + 16 + length]))
            pos += 20 + length
        return cls(header, recs, data[max(pos, 16) :] if len(data) > 16 else b"")

    def copy(self) -> "RdcFile":
        f = RdcFile(self.header, [r.copy() for r in self.records], self.tail)
        f.header_crc = self.header_crc
        return f

    def tensor_of(self, i: int) -> dict | None:
        """The parsed TENSOR header that chunk record ``i`` belongs to."""
        for j in range(i - 1, -1, -1):
            if self.records[j].rtype == REC_TENSOR:
                return parse_tensor(self.records[j].payload)
            if self.records[j].rtype != REC_CHUNK:
                return None
        return None

    def to_bytes(self, fix: bool = True) -> bytes:
        """Serialise; with ``fix``, chunk padding, INDEX and END are made consistent with the records."""
        out = bytearray()
        if len(self.header) == 16:
            head = self.header[:12]
            out += head + struct.pack("<I", crc(head) if self.header_crc is None else self.header_crc)
        else:
            out += self.header
        entries: list[tuple[int, bytes, int, int]] = []
        current: list | None = None
        codec = None  # codec id of the tensor whose chunks follow
        index_at = None
        ends: list[tuple[int, Record]] = []
        layers: list[int] = []  # [first LAYER record start, last LAYER record end]
        for rec in self.records:
            payload = rec.payload
            if fix and not rec.frozen:
                if (rec.rtype == REC_CHUNK and codec == b"raw" and len(payload) >= 9 and 0 < payload[8] < 64
                        and not any(payload[9 : 9 + payload[8]])):  # keep aligned raw chunk data aligned
                    pad = (-(len(out) + 16 + 9)) % 64
                    payload = payload[:8] + bytes([pad]) + bytes(pad) + payload[9 + payload[8] :]
                if rec.rtype != REC_CHUNK and current is not None:
                    entries.append((1, current[0], current[1], len(out) - current[1]))
                    current = None
                if rec.rtype == REC_TAIL:
                    if layers:
                        entries.append((6, b"", layers[0], layers[1] - layers[0]))
                    parsed = parse_tail_lenient(payload[:-4])
                    unindexed = parsed is not None and not parsed[1]  # count 0: keep it so
                    payload = tail_payload([] if unindexed else entries, len(out), len(self.tail))
                if rec.rtype == REC_INDEX:
                    if layers:
                        entries.append((6, b"", layers[0], layers[1] - layers[0]))
                    payload = struct.pack("<Q", len(entries)) + b"".join(
                        bytes([k]) + str16(n) + struct.pack("<QQ", o, ln) for k, n, o, ln in entries)
            start = len(out)
            length = len(payload) if rec.length is None else rec.length
            head = _HEAD.pack(rec.rtype & 0xFFFF, rec.flags & 0xFFFF, length % (1 << 64))
            out += head + struct.pack("<I", crc(head) if rec.head_crc is None else rec.head_crc)
            out += payload
            out += struct.pack("<I", crc(payload) if rec.payload_crc is None else rec.payload_crc)
            if rec.rtype == REC_TENSOR:
                t = parse_tensor(payload)
                current = [t["name"], start] if t else None
                codec = t["codec"] if t else None
            elif rec.rtype in (REC_ALIAS, REC_SMALL) and len(payload) >= 2:
                n = struct.unpack_from("<H", payload)[0]
                entries.append((2 if rec.rtype == REC_ALIAS else 1, payload[2 : 2 + n], start, len(out) - start))
            elif rec.rtype in (REC_META, REC_GRAPH, REC_ZMETA, REC_ZGRAPH, REC_DMETA, REC_XGRAPH):
                entries.append((3 if rec.rtype in (REC_META, REC_ZMETA, REC_DMETA) else 4, b"", start,
                                len(out) - start))
            elif rec.rtype == REC_LAYER:
                layers[:] = [layers[0] if layers else start, len(out)]
            elif rec.rtype in (REC_PACK, REC_ZPACK):  # since 1.3: one unnamed index entry for the whole record
                entries.append((5, b"", start, len(out) - start))
            elif rec.rtype == REC_INDEX:
                index_at = start
            elif rec.rtype == REC_END and fix and not rec.frozen:
                ends.append((start, rec))
        total = len(out) + len(self.tail)
        for start, rec in ends:  # END payloads are 16 bytes: record sizes do not change
            if len(rec.payload) != 16 or rec.length is not None:
                continue
            payload = struct.pack("<QQ", index_at or 0, total)
            out[start + 16 : start + 32] = payload
            if rec.payload_crc is None:
                out[start + 32 : start + 36] = struct.pack("<I", crc(payload))
        out += self.tail
        return bytes(out)


def tail_entries_bytes(entries, prev_end: int = 16) -> bytes:
    """The entries of a TAIL payload (format 1.6): kind, varint name length, name, varint gap, varint length;
    a gap that would be negative (mutated entries) is written as 0."""
    out = bytearray()
    for kind, name, off, ln in entries:
        out += bytes([kind & 0xFF]) + varint(len(name)) + name + varint(max(0, off - prev_end)) + varint(ln)
        prev_end = max(prev_end, off) + ln
    return bytes(out)


def tail_payload(entries, start: int, trailing: int = 0) -> bytes:
    """A consistent TAIL payload for a record at ``start`` (``trailing`` bytes follow the record): the file
    length (which counts the record itself, so its varint is settled by iteration), entries, u32 trailer."""
    body = varint(len(entries)) + tail_entries_bytes(entries)
    total = start + 20 + 1 + len(body) + 4 + trailing
    while True:
        head = varint(total)
        new = start + 20 + len(head) + len(body) + 4 + trailing
        if new == total:
            break
        total = new
    return head + body + struct.pack("<I", len(head) + len(body))


def parse_tail_lenient(p: bytes):
    """(file length, [[kind, name, gap, length], ...]) of a TAIL payload, or None where it does not parse."""
    def rd(pos):
        v, shift = 0, 0
        while True:
            b = p[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v, pos
    try:
        flen, pos = rd(0)
        count, pos = rd(pos)
        entries = []
        for _ in range(min(count, 1000)):
            kind = p[pos]
            n, pos = rd(pos + 1)
            name = p[pos : pos + n]
            gap, pos = rd(pos + n)
            ln, pos = rd(pos)
            entries.append([kind, name, gap, ln])
        return flen, entries
    except IndexError:
        return None


def m_tail(rng: np.random.Generator, f: RdcFile) -> bool:
    """Mutate a TAIL record (format 1.6): its file length, entry count, an entry's kind, name, gap or length,
    the order of entries, or its u32 trailer; the record is then written as mutated (frozen)."""
    idx = _records_of(f, REC_TAIL)
    if not idx:
        return False
    rec = f.records[pick(rng, idx)]
    rec.frozen = True
    parsed = parse_tail_lenient(rec.payload[:-4])
    if parsed is None or rng.random() < 0.15:
        rec.payload = mutate_bytes(rng, rec.payload)
        return True
    flen, entries = parsed
    count = len(entries)
    trailer = None
    op = int(rng.integers(7))
    if op == 0:
        flen = rand_u64(rng, around=flen)
    elif op == 1:
        count = rand_u64(rng, around=count) % (1 << 35)
    elif op == 2 and entries:
        e = pick(rng, entries)
        k = int(rng.integers(4))
        if k == 0:
            e[0] = pick(rng, [0, 1, 2, 3, 4, 5, 6, 7, 255])
        elif k == 1:
            e[1] = pick(rng, [b"", b"nope", b"\xff"] + _tensor_names(f))
        else:
            e[k] = rand_u64(rng, around=e[k]) % (1 << 63)
    elif op == 3 and entries:
        del entries[int(rng.integers(len(entries)))]
        count = len(entries)
    elif op == 4 and len(entries) > 1:
        i = int(rng.integers(len(entries) - 1))
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    elif op == 5:
        trailer = rand_u64(rng) % (1 << 32)
    else:
        rec.payload = mutate_bytes(rng, rec.payload)
        return True
    body = varint(flen) + varint(count) + b"".join(
        bytes([e[0] & 0xFF]) + varint(len(e[1])) + e[1] + varint(e[2]) + varint(e[3]) for e in entries)
    rec.payload = body + struct.pack("<I", len(body) if trailer is None else trailer)
    return True


def _noncanonical(v: int, pad: int) -> bytes:
    """LEB128 of ``v`` with ``pad`` redundant continuation bytes (spec 3.1 rule 4 refuses them)."""
    out = bytearray(varint(v))
    out[-1] |= 0x80
    return bytes(out) + b"\x80" * (pad - 1) + b"\x00"


def m_tail_layout(rng: np.random.Generator, f: RdcFile) -> bool:
    """Where the index lives (format 1.6): INDEX + END turned into a TAIL and back, an indexed TAIL made
    unindexed (count 0: a reader by name walks the records) and the reverse, the TAIL dropped (no end
    record), cut short, moved before other records or doubled, both a TAIL and INDEX + END, non-canonical
    varints, stray records in an unindexed file (a CHUNK after an ALIAS, an INDEX, an END, unknown ones).
    Unless frozen, ``to_bytes`` then writes the TAIL's entries, offsets and lengths to match the records."""
    tails = _records_of(f, REC_TAIL)
    olds = _records_of(f, REC_INDEX, REC_END)
    op = int(rng.integers(10))
    if op == 0 and olds:  # INDEX + END -> one TAIL (indexed or not)
        f.records = [r for r in f.records if r.rtype not in (REC_INDEX, REC_END)]
        f.records.append(Record(REC_TAIL, 1, tail_payload([] if rng.random() < 0.4 else [(1, b"x", 16, 0)], 0)))
    elif op == 1 and tails:  # TAIL -> INDEX + END (a 1.5 layout)
        f.records = [r for r in f.records if r.rtype != REC_TAIL]
        f.records += [Record(REC_INDEX, 0, struct.pack("<Q", 0)), Record(REC_END, 0, bytes(16))]
    elif op == 2 and tails:  # indexed <-> unindexed
        rec = f.records[tails[-1]]
        parsed = parse_tail_lenient(rec.payload[:-4])
        unindexed = parsed is not None and not parsed[1]
        rec.payload = tail_payload([(1, b"x", 16, 0)] if unindexed else [], 0)
        rec.frozen = False
    elif op == 3 and tails:  # no TAIL at all, or the file cut inside it
        i = tails[-1]
        if rng.random() < 0.5:
            del f.records[i]
        else:
            rec = f.records[i]
            rec.length = len(rec.payload)  # header as written, payload then cut by the file truncation
            rec.payload = rec.payload[: int(rng.integers(len(rec.payload) + 1))]
            rec.frozen = True
            del f.records[i + 1 :]
            f.tail = b""
    elif op == 4 and tails:  # the TAIL not last: moved, doubled, or followed by INDEX + END
        i = tails[-1]
        r = rng.random()
        if r < 0.4:
            f.records.insert(int(rng.integers(len(f.records))), f.records.pop(i))
        elif r < 0.7:
            f.records.insert(i, f.records[i].copy())
        else:
            f.records += [Record(REC_INDEX, 0, struct.pack("<Q", 0)), Record(REC_END, 0, bytes(16))]
    elif op == 5 and tails:  # a non-canonical varint: file length, count or an entry's gap/length
        rec = f.records[tails[-1]]
        parsed = parse_tail_lenient(rec.payload[:-4])
        if parsed is None:
            return False
        flen, entries = parsed
        which = int(rng.integers(3 if entries else 2))
        pad = pick(rng, [1, 2, 9])
        head = _noncanonical(flen, pad) if which == 0 else varint(flen)
        head += _noncanonical(len(entries), pad) if which == 1 else varint(len(entries))
        body = bytearray()
        j = int(rng.integers(len(entries))) if entries else -1
        for k, e in enumerate(entries):
            gap = _noncanonical(e[2], pad) if which == 2 and k == j else varint(e[2])
            body += bytes([e[0] & 0xFF]) + varint(len(e[1])) + e[1] + gap + varint(e[3])
        payload = head + bytes(body)
        rec.payload = payload + struct.pack("<I", len(payload))
        rec.frozen = True
    elif op == 6 and tails:  # an unindexed file with a stray record before its TAIL
        rec = f.records[tails[-1]]
        rec.payload, rec.frozen = tail_payload([], 0), False
        stray = pick(rng, [Record(REC_CHUNK, 0, bytes(10)), Record(REC_INDEX, 0, bytes(8)),
                           Record(REC_END, 0, bytes(16)), Record(REC_TAIL, 1, tail_payload([], 0)),
                           Record(99, 0, b"optional"), Record(99, 1, b"required"), Record(REC_LAYER, 1, b"")])
        f.records.insert(int(rng.integers(tails[-1] + 1)), stray)
    elif op == 7 and tails:  # an indexed TAIL with an extra or a dropped entry, rebuilt otherwise consistent
        rec = f.records[tails[-1]]
        rec.frozen = True
        parsed = parse_tail_lenient(rec.payload[:-4])
        if parsed is None or not parsed[1]:
            return False
        flen, entries = parsed
        if rng.random() < 0.5:
            entries.insert(int(rng.integers(len(entries) + 1)), [pick(rng, [1, 2, 3, 4, 5, 6]),
                                                                 pick(rng, [b"", b"w", b"x"]), 0, 20])
        else:
            del entries[int(rng.integers(len(entries)))]
        body = varint(flen) + varint(len(entries)) + b"".join(
            bytes([e[0] & 0xFF]) + varint(len(e[1])) + e[1] + varint(e[2]) + varint(e[3]) for e in entries)
        rec.payload = body + struct.pack("<I", len(body))
    elif op == 8 and tails:  # the TAIL's flags / trailer pointing elsewhere (found from the file's end)
        rec = f.records[tails[-1]]
        if rng.random() < 0.5:
            rec.flags = pick(rng, [0, 2, 0xFFFF])
        else:
            rec.frozen = True
            trailer = pick(rng, [0, 1, len(rec.payload), 1 << 30, (1 << 32) - 1, len(rec.payload) - 5])
            rec.payload = rec.payload[:-4] + struct.pack("<I", trailer % (1 << 32))  # a short payload: -1 etc.
    elif not tails and not olds:  # a file with neither: give it a TAIL
        f.records.append(Record(REC_TAIL, 1, tail_payload([], 0)))
    else:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# file mutations


def _records_of(f: RdcFile, *types: int) -> list[int]:
    return [i for i, r in enumerate(f.records) if r.rtype in types]


def _tensor_names(f: RdcFile) -> list[bytes]:
    names = []
    for i in _records_of(f, REC_TENSOR):
        t = parse_tensor(f.records[i].payload)
        if t:
            names.append(t["name"])
    return names or [b"w"]


def m_tensor(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_TENSOR)
    if not idx:
        return False
    rec = f.records[pick(rng, idx)]
    t = parse_tensor(rec.payload)
    if t is None:
        rec.payload = mutate_bytes(rng, rec.payload)
        return True
    op = int(rng.integers(12))
    if op == 0:
        t["name"] = pick(rng, [b"", b"x" * 1025, b"\xff\xfe", pick(rng, _tensor_names(f)), t["name"] + b"2", b"a\x00b"])
    elif op == 1:
        t["dtype"] = pick(rng, list(range(0, 17)) + [0xFFFF, 255])
    elif op == 2 and t["dims"]:
        i = int(rng.integers(len(t["dims"])))
        t["dims"][i] = rand_u64(rng, around=t["dims"][i])
    elif op == 3:  # rank changes
        if rng.random() < 0.3:
            t["rank"] = pick(rng, [0, 1, 64, 65, 255, len(t["dims"]) + 1])
        elif t["dims"] and rng.random() < 0.5:
            del t["dims"][int(rng.integers(len(t["dims"])))]
        else:
            t["dims"].insert(int(rng.integers(len(t["dims"]) + 1)), pick(rng, [0, 1, 1, 2, 1 << 40]))
    elif op == 4:
        t["flags"] = pick(rng, [0, 1, 2, 0xFF])
    elif op == 5:
        t["ce"] = rand_u64(rng, around=t["ce"])
    elif op == 6:
        t["cc"] = rand_u64(rng, around=t["cc"])
    elif op == 7:
        t["codec"] = pick(rng, CODEC_IDS)
    elif op == 8:
        t["cfg"] = pick(rng, CONFIGS)
    elif op == 9:
        t["extra"] = pick(rng, [b"", b"\x00", b"junk"])
    elif op == 10:  # a consistent "bomb": huge dims with matching chunk fields
        big = pick(rng, [1 << 20, 1 << 24, 1 << 26, 1 << 28, 1 << 31, 1 << 34, 1 << 40, (1 << 63) - 1])
        t["dims"] = [big] if rng.random() < 0.5 else [big, pick(rng, [0, 1, 3])]
        t["ce"] = pick(rng, [1, 7, 1 << 10, 1 << 16, 1 << 20, 1 << 26, 1 << 28, big])
    else:  # dims/chunk elements changed together, counts kept consistent
        t["dims"] = [int(rng.integers(0, 40)) for _ in range(int(rng.integers(0, 4)))]
        t["ce"] = int(rng.integers(1, 50))
    if op in (2, 3, 5, 10, 11) and rng.random() < 0.8:
        n = numel(t["dims"])
        t["cc"] = 0 if n == 0 or not t["ce"] else -(-n // t["ce"])
    rec.payload = build_tensor(t)
    return True


def m_chunk(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_CHUNK)
    if not idx:
        return False
    i = pick(rng, idx)
    rec = f.records[i]
    p = rec.payload
    if len(p) < 9:
        rec.payload = mutate_bytes(rng, p)
        return True
    index, pad = struct.unpack_from("<QB", p)
    data = p[9 + pad :] if pad < 64 else p[9:]
    op = int(rng.integers(8))
    if op == 0:
        index = rand_u64(rng, around=index)
    elif op == 1:
        pad = pick(rng, [0, 1, 63, 64, 255])
        rec.frozen = True
    elif op == 2 and pad:
        rec.payload = p[:9] + b"\x01" + p[10:]
        rec.frozen = True
        return True
    elif op in (3, 4, 5, 6):
        t = f.tensor_of(i)
        if t is not None and t["codec"] == b"bytesplit" and t["dtype"] in ITEMSIZE and t["ce"]:
            n = numel(t["dims"])
            count = max(0, min(t["ce"], n - index * t["ce"]))
            data = mutate_planes(rng, data, count, ITEMSIZE[t["dtype"]])
        else:
            data = mutate_bytes(rng, data)
    else:
        data = mutate_bytes(rng, data)
    rec.payload = struct.pack("<QB", index % (1 << 64), pad) + bytes(min(pad, 255)) + data
    return True


def m_index(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_INDEX)
    if not idx:
        return False
    rec = f.records[pick(rng, idx)]
    rec.frozen = True
    p = rec.payload
    try:
        count = struct.unpack_from("<Q", p)[0]
        entries, pos = [], 8
        for _ in range(min(count, 1000)):
            kind = p[pos]
            n = struct.unpack_from("<H", p, pos + 1)[0]
            name = p[pos + 3 : pos + 3 + n]
            off, ln = struct.unpack_from("<QQ", p, pos + 3 + n)
            entries.append([kind, name, off, ln])
            pos += 19 + n
    except (IndexError, struct.error):
        rec.payload = mutate_bytes(rng, p)
        return True
    op = int(rng.integers(6))
    if op == 0:
        count = rand_u64(rng, around=count)
    elif op == 1 and entries:
        e = pick(rng, entries)
        k = int(rng.integers(4))
        if k == 0:
            e[0] = pick(rng, [0, 1, 2, 3, 4, 5, 255])
        elif k == 1:
            e[1] = pick(rng, [b"", b"nope"] + _tensor_names(f))
        elif k == 2:
            e[2] = rand_u64(rng, around=e[2])
        else:
            e[3] = rand_u64(rng, around=e[3])
    elif op == 2 and entries:
        del entries[int(rng.integers(len(entries)))]
        count = len(entries)
    elif op == 3 and entries:
        entries.append(list(pick(rng, entries)))
        count = len(entries)
    elif op == 4 and len(entries) > 1:
        i = int(rng.integers(len(entries) - 1))
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
    else:
        rec.payload = mutate_bytes(rng, p)
        return True
    rec.payload = struct.pack("<Q", count % (1 << 64)) + b"".join(
        bytes([e[0] & 0xFF]) + str16(e[1]) + struct.pack("<QQ", e[2] % (1 << 64), e[3] % (1 << 64)) for e in entries)
    return True


def m_end(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_END)
    if not idx:
        return False
    rec = f.records[pick(rng, idx)]
    rec.frozen = True
    if len(rec.payload) == 16:
        a, b = struct.unpack("<QQ", rec.payload)
        if rng.random() < 0.5:
            a = rand_u64(rng, around=a)
        else:
            b = rand_u64(rng, around=b)
        rec.payload = struct.pack("<QQ", a % (1 << 64), b % (1 << 64))
    else:
        rec.payload = mutate_bytes(rng, rec.payload)
    return True


def m_alias(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_ALIAS)
    names = _tensor_names(f)
    if not idx or rng.random() < 0.3:  # insert a new alias somewhere
        at = int(rng.integers(len(f.records) + 1))
        payload = str16(pick(rng, [b"alias", b"", pick(rng, names)])) + str16(pick(rng, names + [b"missing", b""]))
        f.records.insert(at, Record(REC_ALIAS, 0, payload))
        return True
    rec = f.records[pick(rng, idx)]
    payload = str16(pick(rng, [b"a2", b"", b"\xff", pick(rng, names)])) + str16(pick(rng, names + [b"missing"]))
    rec.payload = payload + (b"x" if rng.random() < 0.1 else b"")
    return True


def m_meta(rng: np.random.Generator, f: RdcFile) -> bool:
    idx = _records_of(f, REC_META, REC_GRAPH)
    if not idx or rng.random() < 0.2:
        at = int(rng.integers(len(f.records) + 1))
        if rng.random() < 0.5:
            f.records.insert(at, Record(REC_META, 0, pick(rng, META_TEXTS)))
        else:
            f.records.insert(at, Record(REC_GRAPH, 0, str16(pick(rng, [b"onnx", b"", b"x" * 65])) + b"G"))
        return True
    rec = f.records[pick(rng, idx)]
    if rec.rtype == REC_META:
        rec.payload = pick(rng, META_TEXTS) if rng.random() < 0.6 else mutate_bytes(rng, rec.payload)
    else:
        rec.payload = str16(pick(rng, [b"onnx", b"", b"\xff", b"x" * 65])) + rec.payload[2:] if rng.random() < 0.5 \
            else mutate_bytes(rng, rec.payload)
    return True


def m_record(rng: np.random.Generator, f: RdcFile, pool: list[RdcFile] | None = None) -> bool:
    """Record-level edits: type, flags, declared length, CRCs, drop/dup/swap/move/insert/splice."""
    recs = f.records
    op = int(rng.integers(11))
    if not recs:
        recs.append(Record(int(rng.integers(1, 9)), 0, b""))
        return True
    i = int(rng.integers(len(recs)))
    rec = recs[i]
    if op == 0:
        rec.rtype = pick(rng, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 99, 0xFFFF])
    elif op == 1:
        rec.flags = pick(rng, [0, 1, 2, 0xFFFE, 0xFFFF])
    elif op == 2:
        rec.length = rand_u64(rng, around=len(rec.payload))
    elif op == 3:
        if rng.random() < 0.5:
            rec.head_crc = int(rng.integers(0, 1 << 32))
        else:
            rec.payload_crc = int(rng.integers(0, 1 << 32))
    elif op == 4:
        del recs[i]
    elif op == 5:
        recs.insert(i, rec.copy())
    elif op == 6 and len(recs) > 1:
        j = int(rng.integers(len(recs)))
        recs[i], recs[j] = recs[j], recs[i]
    elif op == 7:
        recs.insert(int(rng.integers(len(recs) + 1)), recs.pop(i))
    elif op == 8:
        flags = pick(rng, [0, 1])
        recs.insert(i, Record(pick(rng, [8, 99, 0x7FFF]), flags, mutate_bytes(rng, b"future")))
    elif op == 9 and pool:
        other = pick(rng, pool)
        if other.records:
            j = int(rng.integers(len(other.records)))
            k = int(rng.integers(1, 4))
            recs[i:i] = [r.copy() for r in other.records[j : j + k]]
    else:
        rec.payload = mutate_bytes(rng, rec.payload)
    return True


def m_header(rng: np.random.Generator, f: RdcFile) -> bool:
    h = bytearray(f.header.ljust(16, b"\x00")[:16])
    op = int(rng.integers(5))
    if op == 0:
        h[8:10] = struct.pack("<H", pick(rng, [0, 1, 2, 0xFFFF]))
    elif op == 1:
        h[10:12] = struct.pack("<H", pick(rng, [0, 1, 9, 0xFFFF]))
    elif op == 2:
        h[int(rng.integers(8))] ^= pick(rng, [1, 0x80, 0xFF])
    elif op == 3:
        f.header_crc = int(rng.integers(0, 1 << 32))
    else:
        f.header = bytes(h[: int(rng.integers(0, 16))])
        return True
    f.header = bytes(h)
    return True


FILE_MUTATORS: list[tuple[float, Callable]] = [
    (0.22, m_tensor), (0.26, m_chunk), (0.08, m_index), (0.05, m_end), (0.08, m_alias), (0.06, m_meta),
    (0.2, m_record), (0.05, m_header), (0.05, m_tail), (0.06, m_tail_layout),
]


def mutate_file(rng: np.random.Generator, data: bytes, pool: list[RdcFile] | None = None,
                max_len: int = MAX_INPUT, mutators: list[tuple[float, Callable]] | None = None) -> bytes:
    """1-3 structure-aware mutations of an .rdc file, CRCs (and usually INDEX/END) fixed up.
    ``mutators``: (weight, function) pairs, default FILE_MUTATORS (fieldmut.py adds more)."""
    mutators = FILE_MUTATORS if mutators is None else mutators
    f = RdcFile.parse(data)
    weights = np.array([w for w, _ in mutators])
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(4):
            fn = mutators[int(rng.choice(len(mutators), p=weights / weights.sum()))][1]
            done = fn(rng, f, pool) if fn is m_record else fn(rng, f)
            if done:
                break
    out = f.to_bytes(fix=rng.random() < 0.9)
    r = rng.random()
    if r < 0.04:
        out = out[: int(rng.integers(len(out) + 1))]
    elif r < 0.06:
        out += mutate_bytes(rng, b"\x00")
    elif r < 0.12:  # byte-level damage, then CRCs fixed again
        out = RdcFile.parse(mutate_bytes(rng, out)).to_bytes(fix=rng.random() < 0.5)
    return out[:max_len]


# ------------------------------------------------------------------------------------------------
# inputs of the codec and ANS harnesses

CODEC_HEAD = struct.Struct("<BIH")  # dtype code, element count, config length; then config, chunk data


def pack_codec_input(dtype_code: int, count: int, config: bytes, data: bytes) -> bytes:
    return CODEC_HEAD.pack(dtype_code & 0xFF, count & 0xFFFFFFFF, len(config) & 0xFFFF) + config + data


def unpack_codec_input(b: bytes) -> tuple[int, int, bytes, bytes] | None:
    if len(b) < CODEC_HEAD.size:
        return None
    dtype_code, count, n = CODEC_HEAD.unpack_from(b)
    cfg = b[CODEC_HEAD.size : CODEC_HEAD.size + n]
    return dtype_code, count, cfg, b[CODEC_HEAD.size + n :]


def mutate_codec_input(rng: np.random.Generator, b: bytes, codec_id: str) -> bytes:
    parsed = unpack_codec_input(b)
    if parsed is None:
        return mutate_bytes(rng, b)
    dtype_code, count, cfg, data = parsed
    op = int(rng.integers(10))
    if op == 0:
        dtype_code = pick(rng, list(range(0, 17)) + [255])
    elif op == 1:
        count = pick(rng, [0, 1, 2, count - 1, count + 1, 2 * count, count // 2, 1 << 16, 1 << 20, (1 << 32) - 1])
    elif op == 2:
        cfg = pick(rng, CONFIGS)
    elif codec_id == "bytesplit" and op < 8 and dtype_code in ITEMSIZE:
        data = mutate_planes(rng, data, count, ITEMSIZE[dtype_code])
    else:
        data = mutate_bytes(rng, data)
    return pack_codec_input(dtype_code, count % (1 << 32), cfg, data)[:MAX_INPUT]


ANS_HEAD = struct.Struct("<BI")  # options (bits 0-1: output dtype, bit 2: numpy backend), symbol count
ANS_OUT = [np.uint8, np.uint16, np.uint32, np.int64]


def pack_ans_input(options: int, count: int, table: bytes, block: bytes) -> bytes:
    return ANS_HEAD.pack(options & 0xFF, count & 0xFFFFFFFF) + table + block


def mutate_ans_input(rng: np.random.Generator, b: bytes) -> bytes:
    if len(b) < ANS_HEAD.size + 1 or rng.random() < 0.1:
        return mutate_bytes(rng, b)
    options, count = ANS_HEAD.unpack_from(b)
    try:
        table, end = Table.parse(b, ANS_HEAD.size)
    except (IndexError, ValueError):
        return ANS_HEAD.pack(options, count) + mutate_bytes(rng, b[ANS_HEAD.size :])
    block = b[end:]
    op = int(rng.integers(7))
    if op == 0:
        options = int(rng.integers(256))
    elif op == 1:
        count = pick(rng, [0, 1, 2, count - 1, count + 1, 2 * count, 4096, 65536, (1 << 32) - 1]) % (1 << 32)
    elif op == 2:
        table.mutate(rng)
    elif op == 3:
        blk = rebuild_block(rng, table, min(count, 1 << 14), lanes=pick(rng, [None, 1, 2, 7, 64]))
        if blk is not None:
            block, count = blk, min(count, 1 << 14)
    else:
        block = mutate_block(rng, block, count)
    return pack_ans_input(options, count, table.to_bytes(), block)[:MAX_INPUT]


# ------------------------------------------------------------------------------------------------
# seeds (from the conformance vectors)


def vector_files() -> list[bytes]:
    """The .rdc conformance vectors, sorted by path: every valid one, and the invalid ones whose file
    header is intact (mutating the others mostly exercises the magic check again)."""
    out = []
    for p in sorted(VECTORS.glob("valid/*.rdc")) + sorted(VECTORS.glob("invalid/*.rdc")):
        data = p.read_bytes()
        if p.parent.name == "valid" or (len(data) > 16 and data[:12] == MAGIC + b"\x01\x00\x00\x00"
                                         and crc(data[:12]) == struct.unpack_from("<I", data, 12)[0]):
            out.append(data)
    return out


def valid_vector_files() -> list[bytes]:
    return [p.read_bytes() for p in sorted((VECTORS / "valid").glob("*.rdc"))]


def chunk_seeds(codec_id: str) -> list[bytes]:
    """Codec harness inputs made from the chunks of the valid vectors that use ``codec_id``."""
    out = []
    for data in valid_vector_files():
        f = RdcFile.parse(data)
        for i, rec in enumerate(f.records):
            if rec.rtype != REC_CHUNK:
                continue
            t = f.tensor_of(i)
            if t is None or t["codec"].decode() != codec_id:
                continue
            index, pad = struct.unpack_from("<QB", rec.payload)
            count = min(t["ce"], numel(t["dims"]) - index * t["ce"])
            out.append(pack_codec_input(t["dtype"], count, t["cfg"], rec.payload[9 + pad :]))
    return out


def ans_seeds() -> list[bytes]:
    """ANS harness inputs: every ANS plane of the valid vectors (table + block)."""
    out = []
    for inp in chunk_seeds("bytesplit"):
        dtype_code, count, _cfg, data = unpack_codec_input(inp)
        for p in parse_planes(data, count, ITEMSIZE.get(dtype_code, 1)) or []:
            if p[0] in ("ans", "pairs"):
                n, opt = (count, 0) if p[0] == "ans" else (-(-count // 2), 1)  # pairs decode to uint16
                table, block = p[1], p[3]
            elif p[0] == "shifted":
                n, opt, table, block = count, 0, p[2], p[4]
            elif p[0] == "joint":  # the ANS block is coded with the derived joint table, uint16 symbols
                table = joint_symbols(p[3], p[4], p[1])
                if table is None:
                    continue
                n, opt, block = count, 1, p[6]
            else:
                continue
            out.append(pack_ans_input(opt, n, table.to_bytes(), block))
            out.append(pack_ans_input(opt | 4, n, table.to_bytes(), block))
    return out


class NonSeekable(io.RawIOBase):
    """A pipe-like stream: no seeking, short reads."""

    def __init__(self, data: bytes, max_read: int = 4093) -> None:
        self._data, self._pos, self._max = data, 0, max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data) - self._pos
        out = self._data[self._pos : self._pos + min(n, self._max)]
        self._pos += len(out)
        return out
