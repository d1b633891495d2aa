"""The Square attack: score-based random search over square windows, without gradients."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_choice, check_fraction, check_int
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.iterative import best_of_restarts
from vulnscope.attacks.losses import LOSSES, is_adversarial
from vulnscope.attacks.norms import lp_norm, project
from vulnscope.errors import InvalidArgumentError

__all__ = ["Square", "square_fraction"]

_TINY = 1e-12
_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)
"""(last iteration out of 10,000, divisor of p_init) of the paper's piecewise-constant p."""


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The paper's schedule of p, the fraction of the image one update changes.

    ``p_init`` halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of
    10,000, the schedule rescaled to a budget of ``queries``.
    """
    scaled = int(iteration / queries * 10_000)
    for last, divisor in _SCHEDULE:
        if scaled <= last:
            return p_init / divisor
    return p_init / 512


def _images(x: Tensor) -> Tensor:
    """A view of ``x`` as (N, C, H, W): (N, D) as 1 x 1 x D, (N, H, W) as 1 x H x W."""
    if x.ndim == 2:
        return x[:, None, None, :]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise InvalidArgumentError(
        "Square needs inputs of shape (N, D), (N, H, W) or (N, C, H, W), "
        f"got shape {tuple(x.shape)}"
    )


def _window(p: float, height: int, width: int, norm: str) -> tuple[int, int]:
    """Sides of a window covering about ``p`` of an image: a square, or a run in 1-D.

    As in the paper, a L∞ window is at least 1 and less than the image's side; a L2
    window has an odd side of at least 3 (its bump needs room), here at most the side.
    """
    flat = height == 1 or width == 1
    extent = max(height, width) if flat else min(height, width)
    size = round(p * height * width) if flat else round(math.sqrt(p * height * width))
    if norm == "linf":
        size = min(max(size, 1), max(extent - 1, 1))
    else:
        size = max(size, 3)
        size = min(size + 1 - size % 2, extent)
    if not flat:
        return size, size
    return (1, size) if height == 1 else (size, 1)


def _rectangle(rows: int, cols: int) -> Tensor:
    """The paper's pseudo-Gaussian bump: nested rectangles weighted 1/k², unit L2 norm."""
    bump = torch.zeros(rows, cols, dtype=torch.float64)
    top, left = rows // 2, cols // 2
    for k in range(max(top, left) + 1):
        bump[max(top - k, 0) : top + k + 1, max(left - k, 0) : left + k + 1] += 1.0 / (k + 1) ** 2
    return _unit(bump)


def _unit(bump: Tensor) -> Tensor:
    return bump / bump.pow(2).sum().sqrt().clamp_min(_TINY)


@functools.lru_cache(maxsize=64)
def _bump(rows: int, cols: int) -> Tensor:
    """Two pseudo-Gaussian halves of opposite sign, split along the longer side; unit norm.

    Cached (a handful of sizes per run): callers must not modify it in place.
    """
    if rows >= cols:
        halves = _rectangle(rows // 2, cols), -_rectangle(rows - rows // 2, cols)
        return _unit(torch.cat(halves, dim=0))
    halves = _rectangle(rows, cols // 2), -_rectangle(rows, cols - cols // 2)
    return _unit(torch.cat(halves, dim=1))


def _masks(top: Tensor, left: Tensor, sides: tuple[int, int], shape: torch.Size) -> Tensor:
    """(n, 1, H, W): True inside each sample's window at (top, left)."""
    height, width = shape[-2], shape[-1]
    rows = torch.arange(height, device=top.device)[None, :] - top[:, None]
    cols = torch.arange(width, device=top.device)[None, :] - left[:, None]
    inside_rows = (rows >= 0) & (rows < sides[0])
    inside_cols = (cols >= 0) & (cols < sides[1])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def _place(bumps: Tensor, top: Tensor, left: Tensor, shape: torch.Size) -> Tensor:
    """(n, 1, H, W): each sample's bump (n, a, b) with its top-left corner at (top, left).

    Outside the window the values are arbitrary: callers multiply by the window's mask.
    """
    sides = bumps.shape[1:]
    rows = torch.arange(shape[2], device=top.device)[None] - top[:, None]
    cols = torch.arange(shape[3], device=top.device)[None] - left[:, None]
    rows, cols = rows.clamp(0, sides[0] - 1), cols.clamp(0, sides[1] - 1)
    batch = torch.arange(bumps.shape[0], device=top.device)[:, None, None]
    return bumps[batch, rows[:, :, None], cols[:, None, :]][:, None]


_MAX_KEYS = 1 << 16
"""Largest number of distinct L∞ candidates per sample that :class:`_Rejected` tracks."""
_MAX_TABLE = 1 << 26
"""Largest table (samples x candidates, bytes) that :class:`_Rejected` allocates."""


class _Rejected:
    """Which L∞ candidates each sample has already evaluated since its best point changed.

    Given the best point, an L∞ candidate is fixed by its window's position and signs (its
    *key*), so a key met again names the same point, whose loss a deterministic model
    repeats: not better, not adversarial. Late in the schedule the windows are 1 x 1 and
    a small image has few keys (128 for a one-channel 8 x 8 image), so a search that has
    stopped improving draws mostly repeats. The table is per window size; above
    ``_MAX_KEYS`` keys or ``_MAX_TABLE`` entries it is not kept (``fresh`` returns None).
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.n, self.device = n, device
        self.sides: tuple[int, int] | None = None
        self.table: Tensor | None = None

    def fresh(self, sides: tuple[int, int], key: Tensor, count: int) -> Tensor | None:
        """(n,) True where ``key`` is new for that sample; records it. None: not tracked."""
        if sides != self.sides:
            self.sides = sides
            small = count <= _MAX_KEYS and self.n * count <= _MAX_TABLE
            self.table = (
                torch.zeros(self.n, count, dtype=torch.bool, device=self.device) if small else None
            )
        if self.table is None:
            return None
        rows = torch.arange(self.n, device=self.device)
        fresh = ~self.table[rows, key]
        self.table[rows, key] = True
        return fresh

    def forget(self, changed: Tensor) -> None:
        """The samples whose best point changed start a fresh record."""
        if self.table is not None:
            self.table[changed] = False

    def keep(self, rows: Tensor) -> None:
        """Follow the batch as samples leave it (``rows``: a mask of those that stay)."""
        self.n = int(rows.sum())
        if self.table is not None:
            self.table = self.table[rows]


class Square(Attack):
    r"""The Square attack: random search that changes one square window per query.

    Andriushchenko, Croce, Flammarion and Hein (2020), "Square attack: a query-efficient
    black-box adversarial attack via random search" (ECCV). Score-based and gradient-free:
    it reads the model's logits only. Each iteration proposes a change inside a random
    ``s x s`` window, the same across channels, and keeps it if the loss improves; ``s``
    follows the paper's schedule, covering a fraction ``p_init`` of the image at first and
    halving ``p`` at fixed fractions of the budget (:func:`square_fraction`).

    - ``"linf"``: starts from vertical stripes (``±eps``, one sign per column and
      channel); an update sets the window to ``x ± eps``, one random sign per channel,
      drawn among those that change the point.
    - ``"l2"``: starts from a grid of pseudo-Gaussian bumps of random signs scaled to
      norm ``eps``; an update moves the perturbation's mass out of a second window into
      the first, adding a fresh bump, and restores the norm ``eps`` (the paper's L2 step).

    A sample stops at its first adversarial query. The first query of a run is its
    starting point (as in the paper), so a run spends at most ``queries`` model evaluations
    per sample: ``forward_evals <= restarts * queries * N``, with equality when no sample
    is broken (the base class's validation and scoring passes are not counted). Each
    restart runs only on the samples still robust; samples never broken return their
    highest-loss point. No query is spent on the clean input: a sample the model already
    misclassifies is attacked like the others (:meth:`Attack.sweep` and the evaluation
    cascade only pass the points still classified correctly). The loss is the paper's:
    the logit margin (untargeted) and the cross-entropy of the target (targeted).

    With ``skip_repeats`` (default), an L∞ candidate that a sample has already evaluated
    since its best point last changed is not sent to the model again: its loss is known
    (not better) and the search goes on exactly as the paper's would, with the same random
    draws, the same accepted steps and the same result, for fewer model evaluations. On
    small images this is most of the late budget: a one-channel 8 x 8 image has 128
    distinct 1 x 1 updates, and on the robust digits 5000 queries made about N evaluations
    (see ``benchmarks/attacks_vs_peers.py``). This assumes a deterministic model; for a
    randomised one, where a second query is a new draw, pass ``skip_repeats=False``.

    Window positions (uniform over all positions in the image) and signs are drawn for
    each sample separately, as in the authors' L∞ code (AutoAttack's shares one window
    across the batch). Inputs (N, C, H, W) are images; (N, H, W) are one-channel images,
    and flat inputs (N, D) are treated as 1 x 1 x D images whose windows are runs of
    adjacent features covering the fraction ``p`` of them. The attack runs under
    ``torch.no_grad()`` and never asks for a gradient (``gradient_free``).

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        eps: perturbation budget in that norm, >= 0 (required).
        queries: model evaluations per sample and restart (default 5000, as AutoAttack).
        p_init: initial fraction of the image an update changes, in (0, 1].
        restarts: independent runs from fresh starting points.
        loss: ``"margin"``, ``"ce"``, or ``None`` (default) for the paper's choice:
            margin when untargeted, cross-entropy of the target when targeted.
        skip_repeats: do not re-evaluate an L∞ candidate already rejected since the
            sample's best point last changed (the result is the same for a
            deterministic model); ``forward_evals`` counts the evaluations made.
        targeted: push the inputs towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        seed: seed of the random search; the same seed gives the same result.

    Shape:
        x: (N, C, H, W), (N, H, W) or (N, D), floating, inside ``bounds``; y, target: (N,).

    Example:
        >>> import torch
        >>> from vulnscope.attacks import Square
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x, y = torch.full((2, 1, 4, 4), 0.5), torch.tensor([0, 1])
        >>> res = Square(eps=0.1, queries=50)(model, x, y)
        >>> res.gradient_evals, res.forward_evals <= 2 * 50
        (0, True)

    """

    supported_norms = ("linf", "l2")
    gradient_free = True

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str | None = None,
        skip_repeats: bool = True,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=seed)
        self.skip_repeats = check_bool(skip_repeats, "skip_repeats")
        self.queries = check_int(queries, "queries")
        self.p_init = check_fraction(p_init, "p_init")
        self.restarts = check_int(restarts, "restarts")
        self.loss = None if loss is None else check_choice(loss, "loss", ("margin", "ce"))

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Restarts of the random search; each sample keeps its first adversarial point."""
        images = _images(x)
        if self.budget() == 0.0:
            return x.clone()

        def evaluate(z: Tensor) -> Tensor:
            return model(z.reshape(z.shape[0], *x.shape[1:]))

        def run_once(todo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            goal = None if target is None else target[todo]
            return self._search(evaluate, images[todo], y[todo], goal, generator)

        with torch.no_grad():
            return best_of_restarts(images, self.restarts, run_once).reshape(x.shape)

    def _search(
        self,
        evaluate: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One run on images (n, C, H, W): final points, whether adversarial, their losses."""
        name = self.loss or ("margin" if target is None else "ce")
        loss = LOSSES[name]
        best = self._start(x, generator)
        logits = evaluate(best)
        result, broken = best.clone(), is_adversarial(logits, y, target)
        result_loss = loss(logits, y, target)
        index = (~broken).nonzero()[:, 0]
        x, y, best, best_loss = x[index], y[index], best[index], result_loss[index]
        target = None if target is None else target[index]
        rejected = (
            _Rejected(index.numel(), x.device)
            if self.norm == "linf" and self.skip_repeats
            else None
        )
        for iteration in range(self.queries - 1):
            if index.numel() == 0:
                break
            p = square_fraction(self.p_init, iteration, self.queries)
            sides = _window(p, x.shape[2], x.shape[3], self.norm)
            if self.norm == "linf":
                candidate, key, count = self._linf_update(x, best, sides, generator)
                ask = None if rejected is None else rejected.fresh(sides, key, count)
            else:
                candidate, ask = self._l2_update(x, best, sides, generator), None
            if ask is None:
                logits = evaluate(candidate)
                values, hit = loss(logits, y, target), is_adversarial(logits, y, target)
            else:  # a repeat is neither better nor adversarial: its loss is known
                values = torch.full_like(best_loss, -math.inf)
                hit = torch.zeros_like(ask)
                if bool(ask.any()):
                    goal = None if target is None else target[ask]
                    logits = evaluate(candidate[ask])
                    values[ask] = loss(logits, y[ask], goal)
                    hit[ask] = is_adversarial(logits, y[ask], goal)
            better = hit | (values > best_loss)
            best[better] = candidate[better]
            best_loss = torch.where(better, values, best_loss)
            if rejected is not None:
                rejected.forget(better)
            if bool(hit.any()):
                result[index[hit]], result_loss[index[hit]] = best[hit], best_loss[hit]
                broken[index[hit]] = True
                keep = ~hit
                index, x, y, best, best_loss = (t[keep] for t in (index, x, y, best, best_loss))
                target = None if target is None else target[keep]
                if rejected is not None:
                    rejected.keep(keep)
        result[index], result_loss[index] = best, best_loss
        return result, broken, result_loss

    def _uniform(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)

    def _signs(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
        return torch.where(self._uniform(shape, like, generator) < 0.5, -1.0, 1.0).to(like.dtype)

    def _positions(
        self, n: int, sides: tuple[int, int], like: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Top-left corners drawn uniformly over all the positions of the window."""
        height, width = like.shape[-2:]
        unit = self._uniform((n, 2), like, generator)
        top = (unit[:, 0] * (height - sides[0] + 1)).long().clamp_max(height - sides[0])
        left = (unit[:, 1] * (width - sides[1] + 1)).long().clamp_max(width - sides[1])
        return top, left

    def _start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The paper's starting points: vertical stripes (L∞) or a grid of bumps (L2)."""
        eps, (n, channels, height, width) = self.budget(), x.shape
        if self.norm == "linf":
            stripes = self._signs((n, channels, 1, width), x, generator)
            return (x + eps * stripes).clamp(*self.bounds)
        # the paper's bumps have a fifth of the side; in 1-D, a fifth of the length
        flat = height == 1 or width == 1
        side = max((max(height, width) if flat else min(height, width)) // 5, 1)
        rows, cols = sides = (1 if height == 1 else side, 1 if width == 1 else side)
        bump = _bump(*sides).to(x)
        delta = torch.zeros_like(x)
        for top in self._grid(height, sides[0]):
            for left in self._grid(width, sides[1]):
                flip = sides[0] == sides[1] and float(self._uniform((1,), x, generator)) > 0.5
                signs = self._signs((n, channels, 1, 1), x, generator)
                piece = (bump.T if flip else bump) * signs
                delta[:, :, top : top + rows, left : left + cols] += piece
        size = lp_norm(delta, "l2").clamp_min(_TINY)[:, None, None, None]
        return (x + eps * delta / size).clamp(*self.bounds)

    @staticmethod
    def _grid(length: int, side: int) -> range:
        """Corners of the paper's initial grid of bumps along one axis (whole bumps only)."""
        first = max((length - 5 * side) // 2, 0) if length > 1 else 0
        return range(first, min(first + (length // side) * side, length - side + 1), side)

    def _linf_update(
        self, x: Tensor, best: Tensor, sides: tuple[int, int], generator: torch.Generator
    ) -> tuple[Tensor, Tensor, int]:
        """Set the window to ``x ± eps``, one random sign per channel (the paper's L∞ step).

        Works on the windows alone, (n, a, b, C) gathered by advanced indexing, so that an
        iteration late in the schedule (1 x 1 windows) costs little beyond one copy.

        Returns the candidates, each one's key (n,) int64 (window position and signs, which
        fix the candidate given ``best``) and the number of keys (above ``_MAX_KEYS``, so
        untracked, beyond 16 channels).
        """
        n, channels = x.shape[:2]
        top, left = self._positions(n, sides, x, generator)
        batch = torch.arange(n, device=x.device)[:, None, None]
        rows = (top[:, None] + torch.arange(sides[0], device=x.device))[:, :, None]
        cols = (left[:, None] + torch.arange(sides[1], device=x.device))[:, None, :]
        centre, current = x[batch, :, rows, cols], best[batch, :, rows, cols]
        signs = self._signs((n, channels), x, generator)
        window = (centre + self.budget() * signs[:, None, None, :]).clamp(*self.bounds)
        # The paper redraws the signs until the point changes. A draw changes nothing only
        # if it equals the one sign vector the window already holds, so drawing one of the
        # others uniformly instead gives the same distribution, without a loop.
        unchanged = (window == current).flatten(1).all(dim=1)
        signs = torch.where(unchanged[:, None], self._flip_some(signs, generator), signs)
        candidate = best.clone()
        moved = (centre + self.budget() * signs[:, None, None, :]).clamp(*self.bounds)
        candidate[batch, :, rows, cols] = moved
        positions = (x.shape[2] - sides[0] + 1) * (x.shape[3] - sides[1] + 1)
        if channels > 16:  # too many sign patterns to track: no key
            return candidate, torch.zeros_like(top), _MAX_KEYS + 1
        bits = ((signs > 0).long() << torch.arange(channels, device=x.device)).sum(1)
        key = (top * (x.shape[3] - sides[1] + 1) + left) * (1 << channels) + bits
        return candidate, key, positions << channels

    def _flip_some(self, signs: Tensor, generator: torch.Generator) -> Tensor:
        """``signs`` (n, C) with a uniformly drawn non-empty subset of channels flipped.

        Exactly uniform for up to 62 channels; beyond, the other channels flip by coin toss.
        """
        n, channels = signs.shape
        exact = min(channels, 62)
        subset = torch.randint(1, 2**exact, (n, 1), generator=generator, device=signs.device)
        flips = ((subset >> torch.arange(exact, device=signs.device)) & 1) == 1
        if channels > exact:
            coins = self._uniform((n, channels - exact), signs, generator) < 0.5
            flips = torch.cat([flips, coins], dim=1)
        return torch.where(flips, -signs, signs)

    def _l2_update(
        self, x: Tensor, best: Tensor, sides: tuple[int, int], generator: torch.Generator
    ) -> Tensor:
        """Move the mass of window 2 into window 1 with a fresh bump (the paper's L2 step)."""
        eps, (n, channels) = self.budget(), x.shape[:2]
        delta = best - x
        top, left = self._positions(n, sides, x, generator)
        first = _masks(top, left, sides, x.shape)
        second = _masks(*self._positions(n, sides, x, generator), sides, x.shape)
        image_norm = lp_norm(delta, "l2")[:, None, None, None]
        inside = delta * first
        inside_norm = inside.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        both_norm = (delta * (first | second)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        bump = _bump(*sides).to(x)
        if sides[0] == sides[1]:
            flip = self._uniform((n, 1, 1), x, generator) > 0.5
            bumps = torch.where(flip, bump.T[None], bump[None])
        else:
            bumps = bump[None].expand(n, *sides)
        placed = _place(bumps, top, left, x.shape) * first
        update = placed * self._signs((n, channels, 1, 1), x, generator)
        update = update + inside / (inside_norm + _TINY)
        scale = ((eps**2 - image_norm**2).clamp_min(0.0) / channels + both_norm**2).sqrt()
        update = update / update.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(_TINY)
        delta = torch.where(second, 0.0, delta)
        delta = torch.where(first, update * scale, delta)
        size = lp_norm(delta, "l2").clamp_min(_TINY)[:, None, None, None]
        return project(x, x + eps * delta / size, norm="l2", eps=eps, bounds=self.bounds)
