"""The shape table: what cnn-summary prints and every training run logs first."""

from __future__ import annotations

from cnn_cli.builder import BuiltModel, fmt_shape, memory_bytes

_HEADERS = ("Name", "Layer", "Output Size", "RF", "Memory KB", "Weight Size", "Params", "MACs")
_NUMERIC = {4, 6, 7}  # right-aligned columns


def format_table(built: BuiltModel) -> str:
    """The layer table with totals, as in the lecture's tables: each layer's output, its
    receptive field in the input, its output's memory per image, weights, params and MACs."""
    body = [("", "Input", fmt_shape(built.input_shape), "", _kb(memory_bytes(built.input_shape)), "", "", "")]
    for row in built.rows:
        indent = "  " * row.depth
        field = "x".join(map(str, row.receptive_field)) if row.receptive_field else ""
        body.append((row.name, indent + row.label, fmt_shape(row.shape), field, _kb(row.memory), row.weight,
                     f"{row.params:,}" if row.params else "", f"{row.macs:,}" if row.macs else ""))
    widths = [max(len(line[i]) for line in (_HEADERS, *body)) for i in range(len(_HEADERS))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in _NUMERIC else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    lines = [line(_HEADERS), rule, *map(line, body), rule]
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    lines.append(f"Total params: {built.params:,} ({trainable:,} trainable)")
    lines.append(f"MACs per image: {built.macs:,}")
    lines.append(f"Activation memory per image: {_kb(built.memory)} KB (float32, the input and every layer's "
                 "output; times the batch size in training)")
    if built.receptive_field:
        lines.append(f"Receptive field of the last spatial layer: {fmt_shape(built.receptive_field)}")
    return "\n".join(lines)


def _kb(size: int) -> str:
    """Kilobytes, to 0.1 KB, or 0.01 KB below 1 KB so that a small layer does not read as none."""
    return f"{size / 1024:,.{1 if size >= 1024 else 2}f}" if size else ""
