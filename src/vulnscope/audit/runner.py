"""Running the stages' pieces: computed here, read from the checkpoint, or left to another rank.

Every piece of every stage goes through :meth:`PieceRunner.run`: a piece already in the
checkpoint is read back; otherwise, in a sharded run, the first rank to claim it computes
it (:class:`~vulnscope.distributed.PieceClaims`), and every computed piece is saved
atomically before the next starts. A checkpointed piece holds the seconds it took and
either the piece (as JSON) or, for a tolerant stage that failed on this model, the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vulnscope._checkpoint import FRESH_FLAG, CheckpointError, Checkpoints
from vulnscope.audit.progress import StageProgress
from vulnscope.audit.stage import AuditPlan, Stage

__all__ = ["PieceRunner", "StageOutcome"]

logger = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    """What one stage's pieces came to on this rank.

    Attributes:
        pieces: the typed pieces in order (None: computed by another rank, not read yet).
        seconds: compute time of the pieces known here.
        failure: why a tolerant stage was dropped (None: it was not).

    """

    pieces: list[Any]
    seconds: float = 0.0
    failure: str | None = None

    @property
    def complete(self) -> bool:
        """Every piece is known (or the stage failed)."""
        return self.failure is not None or all(piece is not None for piece in self.pieces)


@dataclass
class PieceRunner:
    """Runs pieces for one audit on one rank.

    Attributes:
        plan: the audit's settings.
        store: the checkpoint (None: nothing is saved).
        progress: the bars (one per stage).
        claim: in a sharded run, whether this rank computes a piece not on disk yet.
        elsewhere: the pieces another rank claimed.

    """

    plan: AuditPlan
    store: Checkpoints | None
    progress: StageProgress
    claim: Callable[[str], bool] | None = None
    elsewhere: list[str] = field(default_factory=list)

    def run(self, stage: Stage[Any, Any]) -> StageOutcome:
        """Every piece of ``stage``: computed, read back, or (sharded) left to its claimant."""
        pieces = stage.pieces(self.plan)
        outcome = StageOutcome(pieces=[])
        with self.progress.stage(stage.name, sum(piece.steps for piece in pieces)) as bar:
            for piece in pieces:
                stored = self.store.load(piece.name) if self.store is not None else None
                if stored is None and self.claim is not None and not self.claim(piece.name):
                    self.elsewhere.append(piece.name)
                    outcome.pieces.append(None)
                    bar.update(piece.steps)
                    continue
                ticked = 0

                def tick(steps: int = piece.steps) -> None:
                    nonlocal ticked
                    if ticked < steps:
                        ticked += 1
                        bar.update(1)

                if stored is None:  # kept as JSON, so a piece read back equals this one
                    stored = self._compute(stage, piece, tick)
                    if self.store is not None:
                        self.store.save(piece.name, stored)
                bar.update(piece.steps - ticked)
                outcome.seconds = round(outcome.seconds + float(stored["seconds"]), 3)
                if "failed" in stored:
                    outcome.failure = str(stored["failed"])
                    outcome.pieces.append(None)
                    continue
                try:
                    outcome.pieces.append(stage.decode_piece(stored["piece"]))
                except (KeyError, ValueError) as error:
                    raise CheckpointError(
                        f"the checkpointed piece {piece.name!r} is damaged ({error}); delete "
                        f"it, or rerun with {FRESH_FLAG}"
                    ) from None
        return outcome

    def _compute(self, stage: Stage[Any, Any], piece: Any, tick: Callable[[], None]) -> Any:
        started = time.perf_counter()
        try:
            value = stage.compute(piece, self.plan, tick)
        except (RuntimeError, NotImplementedError) as error:
            if not stage.tolerant:
                raise
            cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
            message = f"the {stage.name} stage failed on this model and was skipped: {cause}"
            logger.warning("%s", message)
            return {"seconds": round(time.perf_counter() - started, 3), "failed": message}
        return {"seconds": round(time.perf_counter() - started, 3), "piece": stage.encode(value)}

    def say_what_is_left(self) -> None:
        """Rank 0 of a sharded run says which pieces it waits for (its bars look full)."""
        if self.store is None:
            return
        unfinished = [name for name in self.elsewhere if name not in self.store]
        if unfinished:
            shown = ", ".join(unfinished[:4]) + (", ..." if len(unfinished) > 4 else "")
            plural = "" if len(unfinished) == 1 else "s"
            logger.info(
                "waiting for the other workers: %d piece%s left (%s)",
                len(unfinished),
                plural,
                shown,
            )
