"""The shape table: what cnn-summary prints and every training run logs first."""

from __future__ import annotations

from cnn_cli.builder import BuiltModel, fmt_shape

_HEADERS = ("Name", "Layer", "Output Size", "Weight Size", "Params", "MACs")


def format_table(built: BuiltModel) -> str:
    """The layer table with totals, as in the lecture's LeNet-5 table plus params and MACs."""
    body = [("", "Input", fmt_shape(built.input_shape), "", "", "")]
    for row in built.rows:
        indent = "  " * row.depth
        body.append((row.name, indent + row.label, fmt_shape(row.shape), row.weight,
                     f"{row.params:,}" if row.params else "", f"{row.macs:,}" if row.macs else ""))
    widths = [max(len(line[i]) for line in (_HEADERS, *body)) for i in range(len(_HEADERS))]
    numeric = {4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    lines = [line(_HEADERS), rule, *map(line, body), rule]
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    lines.append(f"Total params: {built.params:,} ({trainable:,} trainable)")
    lines.append(f"MACs per image: {built.macs:,}")
    if built.receptive_field:
        lines.append(f"Receptive field of the last spatial layer: {fmt_shape(built.receptive_field)}")
    return "\n".join(lines)
