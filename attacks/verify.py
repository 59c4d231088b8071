"""Re-check an evaluation from its kept adversarial points, without running any attack.

A leaderboard row keeps, per example its attacks broke, the point that broke it (the first
attack in the plan's order to succeed), in ``adversarial.safetensors``. Given the model and the
evaluated points, :func:`verify_points` checks every kept point is finite, inside [0, 1] and the
ε-ball around its clean point, and misclassified; then it recomputes the worst-case accuracy
from them: kept points stand in for their examples, the others are their clean points. The count
of correctly classified points must equal the row's worst-case count exactly — a robustness
claim anyone can re-check from the row's artifacts and the checkpoint in seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from attacks.evaluate import Broken, predictions, threat_model_violations

POINTS_FILE = "adversarial.safetensors"


def save_points(path: str | Path, broken: Broken, **metadata: str | float | int) -> Path:
    """The breaking points with what they were computed against (ε, norm, n, checksum…)."""
    path = Path(path)
    save_file({"index": broken.index.cpu().contiguous(),
               "x_adv": broken.x_adv.detach().float().cpu().contiguous()}, str(path),
              metadata={key: json.dumps(value) for key, value in metadata.items()})
    return path


def load_points_file(path: str | Path) -> tuple[Broken, dict[str, str | float | int]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}
    tensors = load_file(str(path))
    return Broken(tensors["index"].long(), tensors["x_adv"]), metadata


@dataclass(frozen=True)
class Verification:
    """What re-checking the kept points found."""

    n: int
    kept: int  # examples with a breaking point
    not_finite: int
    outside_box: int
    outside_ball: int
    still_correct: int  # kept points the model classifies correctly after all
    robust: int  # correctly classified points once every kept point stands in for its example
    reported_robust: int | None  # the row's own count (worst-case accuracy × n)

    @property
    def accuracy(self) -> float:
        return self.robust / self.n if self.n else float("nan")

    @property
    def ok(self) -> bool:
        return (not (self.not_finite or self.outside_box or self.outside_ball
                     or self.still_correct)
                and (self.reported_robust is None or self.robust == self.reported_robust))

    def lines(self) -> list[str]:
        checks = [("finite", self.not_finite), ("inside [0, 1]", self.outside_box),
                  ("inside the ε-ball", self.outside_ball),
                  ("misclassified", self.still_correct)]
        out = [f"{self.kept} kept adversarial points of {self.n} evaluated"]
        out += [f"  {name}: {'ok' if bad == 0 else f'{bad} points fail'}" for name, bad in checks]
        reported = ("" if self.reported_robust is None else
                    f"; the row says {self.reported_robust}/{self.n} "
                    f"({'equal' if self.robust == self.reported_robust else 'DIFFERENT'})")
        out.append(f"worst-case accuracy recomputed from the points: {self.robust}/{self.n} = "
                   f"{self.accuracy:.2%}{reported}")
        out.append("verified" if self.ok else "NOT verified")
        return out

    def to_dict(self) -> dict[str, int | float | bool | None]:
        return {**asdict(self), "accuracy": self.accuracy, "ok": self.ok}


def verify_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, broken: Broken, *,
                  epsilon: float, norm: str, reported_robust: int | None = None,
                  batch_size: int = 256) -> Verification:
    """Check the kept points against the model and the clean points ``x, y`` they came from."""
    if len(broken.index) and (broken.index.min() < 0 or broken.index.max() >= len(x)):
        raise ValueError(f"kept points index examples outside the {len(x)} evaluated ones")
    index = broken.index.to(x.device)
    x_adv = broken.x_adv.to(x.device, x.dtype)
    violations = threat_model_violations(x_adv, x[index], epsilon, norm)
    finite = torch.isfinite(x_adv).flatten(1).all(1)
    points = x.clone()
    points[index[finite]] = x_adv[finite]
    correct = predictions(model, points, batch_size) == y
    correct[index[~finite]] = True  # a point that is not a point breaks nothing
    return Verification(n=len(x), kept=len(index), not_finite=violations["not finite"],
                        outside_box=violations["outside [0, 1]"],
                        outside_ball=violations["outside the ε-ball"],
                        still_correct=int(correct[index].sum()), robust=int(correct.sum()),
                        reported_robust=reported_robust)
