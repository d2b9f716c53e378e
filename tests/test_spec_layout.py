"""A file assembled by hand from spec/rdc-v1.md (struct + zlib only, not the writer) must read back.

If this test and the writer disagree, one of them no longer follows the spec.
"""

from __future__ import annotations

import io
from pathlib import Path
import struct
import zlib

import numpy as np

import rdformat
from rdformat.format import records as C


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def record(rtype: int, payload: bytes, flags: int = 0) -> bytes:
    head = struct.pack("<HHQ", rtype, flags, len(payload))
    return head + struct.pack("<I", crc(head)) + payload + struct.pack("<I", crc(payload))


def str16(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def str32(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def tensor_payload(name, dtype_code, dims, chunk_elements, chunk_count, codec, config, flags=0):
    return (str16(name) + struct.pack("<HBB", dtype_code, len(dims), flags)
            + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<QQ", chunk_elements, chunk_count) + str16(codec) + str32(config))


def chunk_payload(index: int, data_offset: int, data: bytes) -> bytes:
    pad = (-(data_offset + 9)) % 64
    return struct.pack("<QB", index, pad) + bytes(pad) + data


def build() -> tuple[bytes, dict[str, np.ndarray]]:
    out = bytearray()
    head = b"\x89RDC\r\n\x1a\n" + struct.pack("<HH", 1, 0)
    out += head + struct.pack("<I", crc(head))
    entries = []

    def add(rtype, payload, kind=None, name=""):
        offset = len(out)
        out.extend(record(rtype, payload))
        if kind is not None:
            entries.append((kind, name, offset, len(out) - offset))
        return offset

    add(1, b'{"producer":"hand"}', kind=3)
    add(2, str16("onnx") + b"GRAPHBYTES", kind=4)

    # "w": float32 2x3 stored raw in two chunks of 4 and 2 elements.
    w = np.array([[1.5, -2.0, 0.0], [3.25, -0.0, 1e-3]], dtype="<f4")
    start = len(out)
    add(3, tensor_payload("w", 12, (2, 3), 4, 2, "raw", "{}"))
    flat = w.reshape(-1).tobytes()
    for i, part in enumerate((flat[:16], flat[16:])):
        add(4, chunk_payload(i, len(out) + 16, part))
    entries.append((1, "w", start, len(out) - start))

    # "s": int64 scalar, structural, bytesplit with a CONSTANT plane and RAW planes.
    start = len(out)
    add(3, tensor_payload("s", 9, (), 1, 1, "bytesplit", '{"transform":"none"}', flags=1))
    planes = bytes([0, 7]) + b"".join(bytes([1, 0]) for _ in range(7))  # 7 then seven zero bytes
    add(4, chunk_payload(0, len(out) + 16, planes))
    entries.append((1, "s", start, len(out) - start))

    # "e": an empty bfloat16 tensor (0 chunks); "t": alias of "w".
    start = len(out)
    add(3, tensor_payload("e", 11, (0, 5), 1, 0, "raw", "{}"))
    entries.append((1, "e", start, len(out) - start))
    add(5, str16("t") + str16("w"), kind=2, name="t")

    index_offset = len(out)
    payload = struct.pack("<Q", len(entries)) + b"".join(
        bytes([k]) + str16(n) + struct.pack("<QQ", o, ln) for k, n, o, ln in entries)
    out += record(6, payload)
    out += record(7, struct.pack("<QQ", index_offset, len(out) + 36))
    return bytes(out), {"w": w, "s": np.array(7, np.int64)}


def test_hand_assembled_file_reads():
    data, expected = build()
    back = rdformat.load(data)
    assert list(back) == ["w", "s", "e", "t"]
    np.testing.assert_array_equal(back["w"], expected["w"])
    assert back["w"].tobytes() == expected["w"].tobytes()
    assert back["s"].shape == () and back["s"] == 7 and back["s"].dtype == np.int64
    assert back["e"].shape == (0, 5) and str(back["e"].dtype) == "bfloat16"
    assert back["t"] is back["w"]
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.metadata == {"producer": "hand"}
        assert f.graph == b"GRAPHBYTES" and f.graph_format == "onnx"
        assert f.info("s").structural
        assert f.aliases == {"t": "w"}
        np.testing.assert_array_equal(f.get_tensor("t"), expected["w"])


def test_writer_output_follows_the_same_layout():
    """The writer's bytes parse with the hand-written field layout above (header, records, footer)."""
    buf = io.BytesIO()
    rdformat.save({"w": np.arange(2048, dtype=np.float32).reshape(2, 1024), "s": np.arange(3, dtype=np.int16)},
                  buf, codec="raw")
    data = buf.getvalue()
    # a PACK record (format 1.3) holds the small tensor "s" and a TAIL record (1.6) ends the file: the writer
    # raised the minor version to 6
    assert data[:8] == b"\x89RDC\r\n\x1a\n" and struct.unpack_from("<HH", data, 8) == (1, 6)
    pos, types = 16, []
    while pos < len(data):
        rtype, flags, length = struct.unpack_from("<HHQ", data, pos)
        assert struct.unpack_from("<I", data, pos + 12)[0] == crc(data[pos:pos + 12])
        payload = data[pos + 16: pos + 16 + length]
        assert struct.unpack_from("<I", data, pos + 16 + length)[0] == crc(payload)
        if rtype == 4:
            pad = payload[8]
            chunk = payload[9 + pad:]
            if len(chunk) >= 4096:  # big raw chunks are 64-byte aligned in the file
                assert (pos + 16 + 9 + pad) % 64 == 0
                assert np.frombuffer(chunk, "<f4").tolist() == list(range(2048))
        if rtype == 8:  # SMALL: str16 name, u16 dtype, u8 rank, u8 flags, LEB128 dims, str8 codec, LEB128 config
            assert flags == 1  # REQUIRED
            n = struct.unpack_from("<H", payload)[0]
            assert payload[2:2 + n] == b"s"
            p = 2 + n
            assert struct.unpack_from("<HBB", payload, p) == (5, 1, 0)  # int16, rank 1
            p += 4
            assert payload[p] == 3  # the one dimension, 3, as a one-byte varint
            p += 1
            assert payload[p:p + 4] == b"\x03raw"
            p += 4
            assert payload[p] == 2 and payload[p + 1:p + 3] == b"{}"
            assert np.frombuffer(payload[p + 3:], "<i2").tolist() == [0, 1, 2]
        if rtype == 11:  # PACK: varint n; per member: varint shared, varint suffix length, suffix, u8 dtype
            # byte, u8 rank, varint dims, varint group; varint g; per group: str8 codec, varint config, varint data
            assert flags == 1  # REQUIRED
            assert payload[:4] == b"\x01\x00\x01s"  # one member, nothing shared, name "s"
            assert payload[4:8] == bytes([5, 1, 3, 0])  # int16, rank 1, dims (3,), group 0
            assert payload[8] == 1  # one group
            assert payload[9:13] == b"\x03raw" and payload[13:16] == b"\x02{}"
            assert payload[16] == 6 and np.frombuffer(payload[17:], "<i2").tolist() == [0, 1, 2]
        types.append(rtype)
        pos += 20 + length
    assert types == [3, 4, 11, 15]
    # TAIL (section 3.1): its payload ends with a u32 stating the payload bytes before it, then the CRC
    body = struct.unpack_from("<I", data, len(data) - 8)[0]
    tail_at = len(data) - 20 - body - 4
    assert struct.unpack_from("<HHQ", data, tail_at) == (15, 1, body + 4)  # REQUIRED
    p = tail_at + 16
    assert data[p:p + 2] == bytes([len(data) & 0x7F | 0x80, len(data) >> 7])  # file length, a 2-byte varint
    assert len(data) >> 7 < 0x80
    p += 2
    # three records before it (at most UNINDEXED_RECORDS): not indexed, the entry count is 0, then the trailer
    assert data[p] == 0 and p + 1 == tail_at + 16 + body
    # the entries a TAIL holds when it lists them: kind, varint name length, name, varint gap, varint length
    w_len = _pack_at(data) - 16
    pack_len = tail_at - _pack_at(data)
    listed = C.tail_record([(1, "w", 16, w_len), (5, "", 16 + w_len, pack_len)], tail_at)
    want = bytes([1, 1]) + b"w" + bytes([0]) + bytes([w_len & 0x7F | 0x80, w_len >> 7])
    want += bytes([5, 0, 0]) + (bytes([pack_len]) if pack_len < 0x80 else bytes([pack_len & 0x7F | 0x80, pack_len >> 7]))
    assert listed[16 + 2 + 1 : -8] == want and listed[16 + 2] == 2


def _pack_at(data: bytes) -> int:
    """Offset of the first PACK record of a well-formed file."""
    pos = 16
    while struct.unpack_from("<H", data, pos)[0] != 11:
        pos += 20 + struct.unpack_from("<Q", data, pos + 4)[0]
    return pos


def test_spec_preset_dictionary_is_the_code_s():
    """Section 1.5 prints the preset dictionary of DMETA and ZPACK records; it must be the bytes the code uses."""
    from rdformat.format.records import PRESET_DICT

    text = (Path(__file__).resolve().parents[1] / "spec" / "rdc-v1.md").read_text()
    block = text.split("with no line breaks", 1)[1].split("```", 2)[1]
    assert "".join(block.strip().splitlines()).encode("ascii") == PRESET_DICT
    assert f"{len(PRESET_DICT)} bytes" in text
