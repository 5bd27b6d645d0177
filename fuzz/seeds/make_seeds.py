#!/usr/bin/env python3
"""Writes the small seed corpus in fuzz/seeds/<target>/: one well-formed input per kind of
message, so a short CI run starts past the first checks of each decoder. The encodings follow
docs/protocol.md (postcard: LEB128 lengths and integers, zigzag for signed, enum variants by
index, fixed arrays as raw bytes). Run it from anywhere: python3 fuzz/seeds/make_seeds.py.
The structured targets (handshake, rendezvous_request) build their inputs with `arbitrary` and
have no seeds."""

import base64
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def text(s):
    data = s.encode()
    return varint(len(data)) + data


def seq(items):
    return varint(len(items)) + b"".join(items)


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


DEVICE_A = bytes([1] * 16)
DEVICE_B = bytes([2] * 16)
GROUP = bytes([7] * 16)

# Values (crates/core/src/value.rs): Null 0, Bool 1, Int 2, Float 3, Str 4, Array 5, Object 6.
def v_int(n):
    return varint(2) + zigzag(n)


def v_str(s):
    return varint(4) + text(s)


def v_float(f):
    return varint(3) + struct.pack("<d", f)


def v_object(entries):
    return varint(6) + varint(len(entries)) + b"".join(text(k) + v for k, v in entries)


# A change (crates/core/src/record.rs): collection, record, hlc, dot, delete, cells.
def change(collection, record, seq_no, cells, delete=False):
    dot = DEVICE_A + varint(seq_no)
    return (
        text(collection)
        + text(record)
        + varint((1_700_000_000_000 << 16) + seq_no)
        + dot
        + bytes([1 if delete else 0])
        + seq(cells)
    )


def cell(field, policy, value, ctx=()):
    # Policies: lww 0, fww 1, counter 2, max 3, min 4. ctx: a list of dots.
    return text(field) + varint(policy) + value + seq([d + varint(s) for d, s in ctx])


CHANGES = seq(
    [
        change("products", "tea", 1, [cell("name", 0, v_str("Green tea")), cell("price", 3, v_float(2.5))]),
        change("products", "tea", 2, [cell("stock", 2, v_int(-2), [(DEVICE_A, 1)])]),
        change("_schemas", "products", 3, [cell("fields", 0, v_object([("stock", v_str("counter"))]))]),
        change("notes", "n1", 4, [], delete=True),
    ]
)

# Frames (crates/wire/src/lib.rs): Frame::V1 is 0; messages Hello 0, Batch 1, Ack 2, Ping 3,
# Pong 4, Message 5, Peers 6, Close 7. The wire_frame target's first byte picks the mode.
def frame(message_variant, body):
    return bytes([0]) + varint(message_variant) + body


hello = (
    varint(1)
    + DEVICE_B
    + text("till-2")
    + GROUP
    + seq([bytes([1])])
    + seq([DEVICE_A + varint(5)])
    + seq([text("shop-1")])
    + bytes([1])
    + varint(7710)
)
envelope = bytes(range(16)) + DEVICE_A + bytes([0]) + text("print-receipt") + text('{"total":12.5}') + varint(1_700_000_000_000) + bytes([4])
peers = seq([DEVICE_A + seq([text("192.168.1.20:7710"), text("[fe80::1]:7710")])])
wire = {
    "hello": frame(0, hello),
    "ack": frame(2, varint(1)),
    "ping": frame(3, varint(9)),
    "pong": frame(4, varint(9)),
    "message": frame(5, envelope),
    "peers": frame(6, peers),
    "close": frame(7, text("bye")),
}
for name, data in wire.items():
    write("wire_frame", f"frame-{name}", bytes([0]) + data)
# Mode 2: a postcard list of changes, compressed and framed by the target.
write("wire_frame", "changes", bytes([2]) + CHANGES)
# Mode 1: an LZ4 block of literals only (a token, then the bytes), size-prepended.
def lz4_literals(data):
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    rest = n - 15
    out = bytearray([0xF0])
    while rest >= 255:
        out.append(255)
        rest -= 255
    out.append(rest)
    return bytes(out) + data


payload = struct.pack("<I", len(CHANGES)) + lz4_literals(CHANGES)
write("wire_frame", "payload", bytes([1]) + struct.pack("<H", 4) + payload)

# Beacon (crates/node/src/discovery/beacon.rs): "MSB1", protocol, device, tag, port, answer.
write("beacon", "announce", b"MSB1" + varint(1) + DEVICE_A + bytes(range(1, 9)) + varint(7710) + bytes([0]))
write("beacon", "answer", b"MSB1" + varint(1) + DEVICE_B + bytes(range(1, 9)) + varint(7711) + bytes([1]))

# Invite code (crates/node/src/group.rs): "MSI1-" + base32 (no padding) of the postcard Invite.
invite = GROUP + bytes(range(32)) + DEVICE_A + seq([text("192.168.1.20:7710")]) + varint(1_700_000_000_000)
code = base64.b32encode(invite).decode().rstrip("=")
write("invite_code", "code", f"MSI1-{code}".encode())
write("invite_code", "code-grouped", ("MSI1-" + "-".join(code[i : i + 5] for i in range(0, len(code), 5)).lower()).encode())

# JSON values: text for the JSON decoders, postcard for the binary one.
documents = {
    "record": {"name": "Tea", "stock": 7, "price": 2.5, "tags": ["a", None, True], "n": {"x": -1}},
    "numbers": [0, -0.0, 1e300, 18446744073709551615, -9223372036854775808, 0.1],
    "text": "tea \u00e9\u6f22\U0001F375",
}
for name, doc in documents.items():
    write("json_value", f"json-{name}", json.dumps(doc, ensure_ascii=False).encode())
write("json_value", "json-deep", b"[" * 33 + b"1" + b"]" * 33)
write("json_value", "tagged", json.dumps({"Object": {"a": {"Int": 1}, "b": {"Array": [{"Str": "x"}, "Null"]}}}).encode())
write("json_value", "postcard-object", v_object([("name", v_str("Tea")), ("stock", v_int(7)), ("price", v_float(2.5))]))

# API bodies (fuzz_targets/api_body.rs): route byte, names byte, then the body (docs/api.md).
bodies = [
    (0, {"name": "Green tea", "price": 2.5, "_scope": "shop-1"}),
    (1, {"field": "stock", "by": -2}),
    (2, {"_id": "till-1-000123", "total": 12.5, "lines": [{"sku": "tea", "qty": 2}]}),
    (3, {"fields": {"parent": "fww", "stock": "counter"}, "default": "lww", "append_only": False}),
    (4, {"role": "writer", "scopes": ["shop-1"], "ttl_s": 3600, "uses": 1, "addrs": True}),
    (5, {"name": "till-2", "heartbeat_interval_ms": 5000}),
    (6, {"addr": "192.168.1.20:7710"}),
    (7, {"to": None, "type": "print-receipt", "data": {"total": 12.5}}),
    (8, {"value": "Black tea"}),
]
for route, body in bodies:
    write("api_body", f"route-{route}", bytes([route, 0]) + json.dumps(body).encode())
