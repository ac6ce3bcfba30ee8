"""Speed, added from outside the math: the methods' updates compiled (`compiled.py`, `speed.compile`)
and stacks of K models trained per kernel (`stack.py`, `speed.n_models`). Nothing here changes what is
computed, beyond float rounding; a reader of the paper's math can skip this package."""
