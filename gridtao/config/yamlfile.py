"""Reading a configuration file's YAML: bounded, strict, and every failure one
:class:`~gridtao.config.schema.ConfigError` naming the file (and the line and column of a YAML
error), never a traceback. Used for the agent's file (:mod:`gridtao.config.agent`, which
re-exports :func:`read_yaml_file` and :data:`MAX_CONFIG_BYTES`) and ``gridtao openadr``'s.

Invariants: only a regular file of at most :data:`MAX_CONFIG_BYTES` bytes of UTF-8 text without
NUL bytes is parsed, with PyYAML's safe loader made stricter (:class:`StrictLoader`): a key
given twice in one mapping, or a value its constructors cannot build, is an error at its line.
What comes back is plain data, not yet checked against any schema. No state; safe from any
thread.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import yaml

from gridtao.config.schema import ConfigError
from gridtao.readfile import read_regular

__all__ = ["MAX_CONFIG_BYTES", "StrictLoader", "read_yaml_file"]

#: The largest configuration file read (a real one is a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml_file(path: str | os.PathLike[str]) -> object:
    """The parsed contents of the YAML file ``path`` (None when empty). Raises
    :class:`ConfigError` naming the file (and the line and column of a YAML error)."""
    file = Path(path)
    where = ascii(str(file))[1:-1] if not str(file).isprintable() else str(file)
    try:  # a FIFO would block, /dev/zero never end
        raw = read_regular(file, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as e:
        if e.errno in (errno.EISDIR, errno.EINVAL):
            kind = "a folder" if e.errno == errno.EISDIR else "not a regular file"
            raise ConfigError(f"{where}: is {kind}: a YAML file is expected") from None
        if e.errno == errno.EFBIG:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES // 1024} KiB: not a "
                              "configuration file") from None
        raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}): a YAML file is "
                          "expected") from None
    if "\x00" in text:
        raise ConfigError(f"{where}: contains NUL bytes: a YAML text file is expected")
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (a control byte)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigError(f"{where} (line {line}, column {column}): invalid YAML: character "
                          f"#x{e.character:04x} is not allowed in YAML text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}{pos}: invalid YAML: {' '.join(problem.split())}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    return data



class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a value its constructors cannot build (an integer of thousands
    of digits, a date such as 2024-13-45, ``!!int abc``) is a YAML error at the value's line,
    not a bare ValueError from deep inside PyYAML; and a key given twice in one mapping is an
    error (PyYAML keeps the last silently: a second ``limits:`` would drop the first's safety
    limits). Keys a merge (``<<``) brings in may still be overridden, as YAML intends."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # Checked as the file is read, before any merge (<<) is flattened into a mapping (a
        # parent's merge rewrites the merged node's own list in place): keys as written, by
        # tag and text, so 1 and "1" are two keys.
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            earlier = first.setdefault((key_node.tag, key_node.value), key_node)
            if earlier is not key_node:
                raise yaml.composer.ComposerError(
                    None, None, f"key {key_node.value!r} given twice in one mapping (first at "
                    f"line {earlier.start_mark.line + 1}): only one can count",
                    key_node.start_mark)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError) as e:
            value = node.value if isinstance(node, yaml.ScalarNode) else ""
            shown = f"{value[:40]}..." if len(value) > 40 else value
            tag = node.tag.rsplit(":", 1)[-1]
            reason = str(e).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown!r} as {tag}: {reason}", node.start_mark,
            ) from None
