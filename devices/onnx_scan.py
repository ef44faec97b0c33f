"""Find what in a model names a file to read (external-data tensors), from the model's protobuf directly.

An ONNX tensor may say its data lives in an external file that the model
names ("external data").  onnxruntime resolves that name against the
model's folder, or, for a model given as bytes, the process's working
directory, so a hostile model could make the edge agent read a file beside
it.  onnxruntime 1.21 and later let a session confine that lookup
(``session.model_external_initializers_file_folder_path``, which
:mod:`devices.ort` sets); an older build, as edge boxes often carry,
ignores the setting it does not know and reads the file.  So a model is
refused before any session sees it if any tensor in it is external, found
here with the standard library alone (the agent does not need the ``onnx``
package).  So is a model with an ``EPContext`` node (precompiled for one
execution provider), whose ``ep_cache_context`` may name a binary for that
provider to read.

The walk follows the ``onnx.proto`` messages that can hold a tensor: the
graph's initializers and sparse initializers, node attributes (``t``,
``tensors``, ``sparse_tensor(s)``) and the subgraphs inside them (``If``,
``Loop``, ``Scan`` bodies), functions and their attribute defaults, and
training graphs.  A sparse tensor is also sized as onnxruntime will
densify it (at load, or when its node runs): a 386-byte model of three
sparse initializers, one stored value each, declared 3 GiB, and checking
it took an agent to 4.1 GiB.  Everything else (including a tensor's own bytes) is
skipped by its length, so a 64 MiB model is scanned without copying it:
1.5 ms for the 5.7 MB reference model.  Fields are counted, and a model of
more than :data:`MAX_FIELDS` is refused: written one element per field,
64 MiB of a tensor's integers took this scan 22 s (onnxruntime 0.5 s),
while exported CNNs pack their data and have a few thousand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["MAX_DEPTH", "MAX_FIELDS", "MalformedModel", "ModelScan", "file_references", "scan_model"]

#: How deep subgraphs may nest (an ``If`` inside a ``Loop`` body inside ...); protobuf's own parser allows 100.
MAX_DEPTH = 100
#: The most protobuf fields a model may have; a bound on the scan's time (about 0.7 s at the worst).
MAX_FIELDS = 1_000_000

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# field number -> the message kind found there, for the fields that can lead to a tensor
_MODEL = {7: "graph", 20: "training", 25: "function"}
_CHILDREN: dict[str, dict[int, str]] = {
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "function": {7: "node", 11: "attribute"},
    "training": {1: "graph", 2: "graph"},
    "tensor": {},
}
_TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 2, 8, 13, 14
_SPARSE_VALUES, _SPARSE_DIMS = 1, 3
_TOO_MANY_ELEMENTS = 1 << 62
#: Bytes per element of TensorProto.DataType; a type not listed (strings, 4-bit types) is counted at 8.
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 17: 1,
                  18: 1, 19: 1, 20: 1}
_NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 3, 4, 5
#: onnxruntime's node for a model precompiled for one execution provider; its ``ep_cache_context``
#: may name a file (``embed_mode: 0``) that the provider reads.  hwsearch measures ONNX as exported.
_FILE_NAMING_OPS = frozenset({b"EPContext"})


class MalformedModel(ValueError):
    """The bytes are not a protobuf message this scan reads (truncated, an unknown wire type, too many fields)."""


class _Field(NamedTuple):
    """One protobuf field: a varint's ``value``, or a length-delimited field's bytes at ``start:end``."""

    number: int
    wire_type: int
    value: int = 0
    start: int = 0
    end: int = 0


class ModelScan(NamedTuple):
    """What one walk over a model found."""

    #: What names a file to read, e.g. ``["tensor 'w'"]``: external-data tensors and ``EPContext`` nodes.
    file_references: list[str]
    #: The bytes the model's sparse tensors take once made dense, all together.
    sparse_dense_bytes: int


def scan_model(model: bytes) -> ModelScan:
    """Walk ``model`` once for what names a file and for the size of its sparse tensors made dense."""
    scan = _Scan(memoryview(model))
    scan.walk(0, len(model), _MODEL, depth=0)
    return ModelScan(scan.found, scan.sparse_dense_bytes)


def file_references(model: bytes) -> list[str]:
    """What in ``model`` names a file to read (empty: nothing), e.g. ``["tensor 'w'"]``.

    Tensors that keep their data in an external file, and nodes that can
    name a file for their provider to read (``EPContext``).
    """
    return scan_model(model).file_references


class _Scan:
    """One model's walk: its bytes, what it found so far and the fields left to read."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.found: list[str] = []
        self.sparse_dense_bytes = 0
        self.fields_left = MAX_FIELDS

    def walk(self, start: int, end: int, children: dict[int, str], *, depth: int) -> None:
        """Descend into the fields of ``data[start:end]`` that ``children`` says can lead to a tensor."""
        if depth > MAX_DEPTH:
            raise MalformedModel(f"subgraphs nest deeper than {MAX_DEPTH}")
        for field in self.fields(start, end):
            kind = children.get(field.number)
            if kind is None or field.wire_type != _LENGTH:
                continue
            if kind == "tensor":
                self.check_tensor(field.start, field.end)
            elif kind == "sparse":
                self.walk_sparse(field.start, field.end)
            elif kind == "node":
                self.walk_node(field.start, field.end, depth=depth + 1)
            else:
                self.walk(field.start, field.end, _CHILDREN[kind], depth=depth + 1)

    def walk_node(self, start: int, end: int, *, depth: int) -> None:
        """Descend into the node's attributes, and note the node if its operator can name a file (``EPContext``).

        One pass over the node's fields does both, so each is read (and counted) once.
        """
        name, op_type = "", b""
        for field in self.fields(start, end):
            if field.wire_type != _LENGTH:
                continue
            if field.number == _NODE_NAME:
                name = bytes(self.data[field.start:field.end]).decode("utf-8", "replace")
            elif field.number == _NODE_OP_TYPE:
                op_type = bytes(self.data[field.start:field.end])
            elif field.number == _NODE_ATTRIBUTE:
                self.walk(field.start, field.end, _CHILDREN["attribute"], depth=depth + 1)
        if op_type in _FILE_NAMING_OPS:
            self.found.append(f"{op_type.decode()} node {name[:64]!r}")

    def walk_sparse(self, start: int, end: int) -> None:
        """Check a sparse tensor's values and indices, and add the dense size its ``dims`` declare."""
        dims: list[int] = []
        element_bytes = 8
        for field in self.fields(start, end):
            if field.number in _CHILDREN["sparse"] and field.wire_type == _LENGTH:
                data_type = self.check_tensor(field.start, field.end)
                if field.number == _SPARSE_VALUES:
                    element_bytes = _ELEMENT_BYTES.get(data_type, 8)
            elif field.number == _SPARSE_DIMS and field.wire_type == _VARINT:
                dims.append(field.value)
            elif field.number == _SPARSE_DIMS and field.wire_type == _LENGTH:  # packed
                dims += self.packed_varints(field.start, field.end)
        elements = 1
        for dim in dims:
            elements = min(elements * dim, _TOO_MANY_ELEMENTS)  # kept small: the bound is far below
        self.sparse_dense_bytes += elements * element_bytes

    def packed_varints(self, start: int, end: int) -> list[int]:
        """The varints packed in ``data[start:end]``, each counted as a field against the bound."""
        values, position = [], start
        while position < end:
            self.count_field()
            value, position = self.varint(position, end)
            values.append(value)
        return values

    def check_tensor(self, start: int, end: int) -> int:
        """Note the tensor if it is external (``data_location: EXTERNAL`` or any ``external_data`` entry).

        Returns its data type (0 if unset).
        """
        name, external, data_type = "", False, 0
        for field in self.fields(start, end):
            if field.number == _TENSOR_DATA_TYPE and field.wire_type == _VARINT:
                data_type = field.value
            elif field.number == _TENSOR_NAME and field.wire_type == _LENGTH:
                name = bytes(self.data[field.start:field.end]).decode("utf-8", "replace")
            elif field.number == _TENSOR_EXTERNAL_DATA or (
                    field.number == _TENSOR_DATA_LOCATION and field.wire_type == _VARINT
                    and field.value == _EXTERNAL):
                external = True
        if external:
            self.found.append(f"tensor {name[:64]!r}")
        return data_type

    def fields(self, start: int, end: int) -> Iterator[_Field]:
        """The fields of the message at ``data[start:end]``; fixed-width ones and groups are skipped."""
        position = start
        while position < end:
            number, wire_type, position = self.key(position, end)
            if wire_type == _VARINT:
                value, position = self.varint(position, end)
                yield _Field(number, wire_type, value=value)
            elif wire_type == _LENGTH:
                position, field_end = self.length_delimited(position, end)
                yield _Field(number, wire_type, start=position, end=field_end)
                position = field_end
            elif wire_type == _START_GROUP:  # ONNX never writes groups, but protobuf parsers skip them
                position = self.skip_group(position, end, number)
            else:
                position = self.skip_fixed(position, end, wire_type)

    def skip_group(self, position: int, end: int, number: int) -> int:
        """The position after the group ``number`` whose fields start at ``position`` (groups nest)."""
        opened = [number]
        while opened:
            field, wire_type, position = self.key(position, end)
            if wire_type == _START_GROUP:
                opened.append(field)
                if len(opened) > MAX_DEPTH:
                    raise MalformedModel(f"groups nest deeper than {MAX_DEPTH}")
            elif wire_type == _END_GROUP:
                if opened.pop() != field:
                    raise MalformedModel("a group ends with another group's number")
            elif wire_type == _VARINT:
                _, position = self.varint(position, end)
            elif wire_type == _LENGTH:
                _, position = self.length_delimited(position, end)
            else:
                position = self.skip_fixed(position, end, wire_type)
        return position

    def key(self, position: int, end: int) -> tuple[int, int, int]:
        """``(field number, wire type, position after the key)``, counting the field against the bound."""
        self.count_field()
        key, position = self.varint(position, end)
        return key >> 3, key & 7, position

    def count_field(self) -> None:
        self.fields_left -= 1
        if self.fields_left < 0:
            raise MalformedModel(f"it has more than {MAX_FIELDS:,} protobuf fields")

    def length_delimited(self, position: int, end: int) -> tuple[int, int]:
        """``(start, end)`` of the bytes of the length-delimited field whose length is at ``position``."""
        length, position = self.varint(position, end)
        if length > end - position:
            raise MalformedModel("a field runs past the end of its message")
        return position, position + length

    @staticmethod
    def skip_fixed(position: int, end: int, wire_type: int) -> int:
        if wire_type not in (_FIXED64, _FIXED32):
            raise MalformedModel(f"wire type {wire_type} is out of place")
        position += 8 if wire_type == _FIXED64 else 4
        if position > end:
            raise MalformedModel("a field runs past the end of its message")
        return position

    def varint(self, position: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while position < end:
            byte = self.data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, position
            shift += 7
            if shift > 63:
                raise MalformedModel("a varint is longer than 10 bytes")
        raise MalformedModel("the model ends inside a field")
