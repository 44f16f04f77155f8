"""Window geometry, per spatial axis, as pure functions: the output-size formula
(W - K + 2P) / S + 1 checked before PyTorch applies it, and the receptive field with its
jump (how far apart, in input positions, neighbouring outputs are)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from cnn_cli.errors import UserError

Shape = tuple[int, ...]  # one sample's shape, without the batch dimension
AXES = {1: ("positions",), 2: ("rows", "columns"), 3: ("slices", "rows", "columns")}


def fmt_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(s) for s in shape)


@dataclass(frozen=True)
class Window:
    """A sliding window, one value per spatial axis; padding None is 'same'."""

    kernel: Shape
    stride: Shape
    padding: Shape | None
    dilation: Shape
    ceil_mode: bool = False

    @property
    def spans(self) -> Shape:
        """Input positions one window covers: a dilated kernel spans d x (K - 1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))


def adaptive_window(shape: Shape, out: Shape) -> Window:
    """The window an adaptive pool averages over: ceil(W / O) wide, every W // O positions
    (at least 1, for an output larger than its input)."""
    n = len(shape) - 1
    return Window(tuple(math.ceil(w / o) for w, o in zip(shape[1:], out[1:])),
                  tuple(max(1, w // o) for w, o in zip(shape[1:], out[1:])), (0,) * n, (1,) * n)


def check_window(window: Window, shape: Shape, at: str) -> list[str]:
    """Refuse a window that cannot fit its padded input; warn about input positions that no
    window reads (a stride above the kernel) or that the last window stops short of."""
    if window.padding is None:  # 'same' pads to fit
        return []
    found = []
    n = len(shape) - 1
    for axis, (w, k, s, p, d, span) in enumerate(zip(shape[1:], window.kernel, window.stride, window.padding,
                                                      window.dilation, window.spans)):
        if min(k, s, d) < 1 or p < 0:
            raise UserError(f"{at}: kernel_size, stride and dilation must be >= 1 and padding >= 0; "
                            f"got kernel {k}, stride {s}, dilation {d}, padding {p}")
        k_text = f"kernel {k}" + (f" with dilation {d} (spans {span})" if d > 1 else "")
        if span > w + 2 * p:
            raise UserError(f"{at}: {k_text} is larger than its padded input: {AXES[n][axis]} {w} + 2 x padding {p} "
                            f"= {w + 2 * p} (input {fmt_shape(shape)}); use a smaller kernel_size or more padding, "
                            "or downsample less before it")
        if span < s:
            found.append(f"{at}: kernel {span} is smaller than stride {s}: {s - span} of every {s} "
                         f"input {AXES[n][axis]} fall between windows and are never read")
        ignored = (w + 2 * p - span) % s - p  # the windows stop short; only positions past the padding are lost
        if ignored > 0 and not window.ceil_mode:
            found.append(f"{at}: (W - K + 2P) / S + 1 = ({w} - {span} + {2 * p}) / {s} + 1 is not a whole number; "
                         f"the last {ignored} input {AXES[n][axis]} are ignored (input {fmt_shape(shape)})")
    return found


@dataclass(frozen=True)
class Field:
    """The receptive field of one output value and the jump between neighbours, in input
    positions per spatial axis; a map of another rank starts afresh at 1 and 1."""

    size: Shape = ()
    jump: Shape = ()

    def of(self, shape: Shape) -> Field | None:
        """This field for a map of `shape`; none for a flat vector."""
        n = len(shape) - 1
        if n < 1:
            return None
        return self if len(self.size) == n else Field((1,) * n, (1,) * n)

    def through(self, window: Window) -> Field:
        """r_out = r_in + (K - 1) x jump_in with K the span; each stride multiplies the jump."""
        return Field(tuple(r + (k - 1) * j for r, k, j in zip(self.size, window.spans, self.jump)),
                     tuple(j * s for j, s in zip(self.jump, window.stride)))

    def stride_since(self, before: Field | None) -> Shape | None:
        """The stride from a map with field `before` to this one, when windows say it (a residual
        body's, which its projection shortcut must take too)."""
        if before is None or len(self.jump) != len(before.jump):
            return None
        return tuple(a // b for a, b in zip(self.jump, before.jump))
