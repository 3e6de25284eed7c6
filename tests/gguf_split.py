"""Write a GGUF file as split shards (`-00001-of-0000N.gguf`), as llama.cpp's gguf-split does."""

from __future__ import annotations

from pathlib import Path

import gguf


def split_gguf(source: Path, out_dir: Path, max_tensors: int) -> list[Path]:
    """Copy `source` into shards of at most `max_tensors` tensors; return the shard paths in order."""
    reader = gguf.GGUFReader(source)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(out_dir / source.name, architecture, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return sorted(out_dir.glob(f"{source.stem}-*-of-*.gguf"))
