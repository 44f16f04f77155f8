"""Batch size and epochs fitted to the size of the training set (trainer.fit_to_data), so that a
few hundred photos get enough steps to learn from and a large set is not trained for ages.

The rule, said in the log as it is applied: batch 32 below 2,000 training images, 64 below
20,000, else 128; as many epochs as make about 300 optimizer steps, at least 5 and at most 30.
"""

from __future__ import annotations

STEPS = 300  # about this many optimizer steps: enough for a new head and a pretrained backbone to settle
EPOCHS = (5, 30)
RULE = ("batch 32 below 2,000 training images, 64 below 20,000, else 128; epochs for about 300 steps, from 5 to 30 "
        "(trainer.fit_to_data=false to choose them yourself)")


def fit_to_data(n: int) -> tuple[int, int, str]:
    """(batch size, epochs, what the log says) for `n` training images."""
    batch = 32 if n < 2_000 else 64 if n < 20_000 else 128
    steps_per_epoch = max(1, n // batch)
    epochs = min(max(round(STEPS / steps_per_epoch), EPOCHS[0]), EPOCHS[1])
    said = (f"{n:,} training images: batch {batch}, {epochs} epochs (about {epochs * steps_per_epoch:,} steps); "
            f"the rule: {RULE}")
    return batch, epochs, said
