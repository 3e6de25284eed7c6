"""Rewrite a GGUF file for tests: split into shards (`-00001-of-0000N.gguf`) or with extra metadata."""

from __future__ import annotations

from pathlib import Path

import gguf


def rewrite_gguf(source: Path, target: Path, max_tensors: int = 0, extra: dict[str, str] | None = None) -> None:
    """Copy `source` to `target` (sharded when `max_tensors` > 0), adding string metadata `extra`."""
    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, architecture, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") \
                or field.name in (extra or {}):
            continue  # the writer adds the first two itself; `extra` replaces the rest
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for key, value in (extra or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def split_gguf(source: Path, out_dir: Path, max_tensors: int) -> list[Path]:
    """Copy `source` into shards of at most `max_tensors` tensors; return the shard paths in order."""
    rewrite_gguf(source, out_dir / source.name, max_tensors=max_tensors)
    return sorted(out_dir.glob(f"{source.stem}-*-of-*.gguf"))
