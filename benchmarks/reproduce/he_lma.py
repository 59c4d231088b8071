"""HE and LMA-AT: PGD-AT vs PGD-AT+HE vs LMA-AT on MNIST ``small_cnn``, PGD-20 and AutoAttack.

Papers: Pang et al., "Boosting Adversarial Training with Hypersphere Embedding" (NeurIPS 2020,
``papers/he_hypersphere_embedding.txt``) and "Augmenting cross-entropy with margin loss and
applying moving average logits regularization" (LMA-AT,
``papers/lma_at_logits_moving_average.txt``). Claim: each method improves on PGD-AT, here
(a) PGD-AT+HE and (b) LMA-AT beat PGD-AT under AutoAttack, decided on the point estimates
(PGD-20 comparisons are printed beside them). Neither paper has an MNIST table, so the "paper"
columns are their CIFAR-10 numbers (L∞, ε = 8/255) and their differences to their own PGD-AT:

==============  =========  =========  =====  ======  ================================
source          model      method     clean  PGD-20  AutoAttack
==============  =========  =========  =====  ======  ================================
HE Table 2      WRN-34-10  PGD-AT     86.75  53.97   not reported (FAB 51.23)
HE Tables 2, 6  WRN-34-10  PGD-AT+HE  86.19  59.36   53.16 (Table 6; FAB 54.45)
LMA Table 4     ResNet-18  PGD-AT     85.80  52.05   46.62
LMA Table 4     ResNet-18  LMA-AT     83.56  57.21   49.10
LMA Table 5     WRN-34-10  PGD-AT     86.46  56.75   51.06
LMA Table 5     WRN-34-10  LMA-AT     85.39  60.62   52.61
==============  =========  =========  =====  ======  ================================

The HE paper gives AutoAttack only for PGD-AT+HE; its strongest attack on both models is FAB
(Table 2), one of AutoAttack's parts, which stands in for the paper's AA-type difference (+3.22).

Threat model: L∞, ε = 0.1, the project's MNIST default (EMR's MNIST table). TRADES' small
CNN protocol (ε = 0.3) trains 100 epochs with 40-step PGD, four times our per-epoch cost, and
ε = 0.3 is not a project default; it does not fit 25 minutes on one core. Training PGD: 10 steps
of ε/4 = 0.025 (both papers: 10 steps of 2/255 at 8/255) from each defense's own start (uniform;
LMA-AT x + 0.001·N(0, I), its Algorithm 1). Evaluation on the first test images, the same for
every arm: PGD-20 on CE, step ε/10 = 0.01 (HE Table 2 / TRADES: 0.003 at 0.031), uniform random
start; AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5,000 queries) at the same ε. Every
accuracy carries a 95% Wilson interval and every comparison an exact McNemar test on the paired
points. HE is attacked on its logits s·cosθ without the margin: the hooked model's forward
(``CosineHead``), checked before evaluation (cosine head, |logits| ≤ s).

Arms and knobs: ``pgd_at``; ``he`` with the ``pgd_at_he_autoattack`` preset (he_base pgd_at,
s = 15, m = 0.2, HE Sec. 4); ``lma_at`` with the ``cifar10_resnet18`` preset (τ = 0.2, δ = 0.9,
α = 5.345, β = 86, LMA Sec. 5.1). α and β are kept: the paper ties α to the architecture
(5.345 ResNet-18, 2.345 WRN-34-10) and β to the dataset (86 with ten classes, 96 with a hundred)
with no rule for other cases; re-tuning them on MNIST would give LMA-AT a search the other arms
do not get, and the smaller network's α with the ten-class β is the closest match.

Recipes (SGD, momentum 0.9, each paper's lr drops at the same fractions of our epochs). Each
paper compares its method with PGD-AT trained by the *same* recipe, and so does this script:
every method has its own PGD-AT control that differs from it only in the defense.
PGD-AT+HE and its control use HE's recipe (Table 6: batch 128, weight decay 5e-4, ÷10 at 75%
and 90%) at lr 0.01 instead of 0.1: at lr 0.1 the BN-free small_cnn's normalised features blow
up and HE stays at chance (pilot, 2 epochs: 12% validation accuracy, ‖z‖ ≈ 2e6). LMA-AT and its
control use LMA's recipe (lr 0.01, batch 100, weight decay 3.5e-3, ÷10 at 75/130 and 90/130).
At lr 0.01 PGD-AT starts slowly on this network (pilot, 2 epochs of 8,500 images: 45% clean /
36% PGD-20 on validation); a method that learns faster under the same recipe wins at this budget,
and the report says how far that, rather than the final robustness the papers measure after
100–130 epochs, may explain a difference. (An earlier version trained the PGD-AT baseline at
HE's lr 0.1 instead: its first epoch stayed at chance and it ended 10 points under both methods
under AutoAttack — a recipe difference, not a defense one, which the matched controls remove.)

Scale (``FULL``): 3 epochs of 11,000 of the 55,000 training images per arm (papers: 100 / 130
epochs on CIFAR-10's 50,000), the papers' 10-step training attack, PGD-20 on the first 1,000 and
AutoAttack on the first 100 of the 10,000 test images, for four arms (two methods, two
controls); the run's CPU time is printed with its results (one thread on an idle core takes
about that long; benchmarks/REPRODUCTION.md records it).
``--smoke`` runs the same pipeline on tiny sizes (two AutoAttack parts, 50 Square queries).

    .venv/bin/python benchmarks/reproduce/he_lma.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from common import (
    Claim,
    finish,
    log,
    markdown_table,
    parser,
    percent,
    setup,
    test_points,
    train_arm,
)
from torch import nn

from attacks.evaluate import evaluate_model
from dashboards.compare import compare_reports
from trainables.config import TrialConfig
from trainables.defenses import preset
from trainables.defenses.he import CosineHead

PAPER = "HE and LMA-AT"
DATASET, MODEL = "mnist", "small_cnn"
EPSILON = 0.1
TRAIN_STEP = EPSILON / 4  # 2/255 of 8/255 in both papers
EVAL_STEP = EPSILON / 10  # 0.003 of 0.031 in HE Table 2 (TRADES' evaluation)
BASELINE = "PGD-AT"  # the method both papers improve on, in the papers' tables
HE_PRESET = preset("he", "pgd_at_he_autoattack")
LMA_PRESET = preset("lma_at", "cifar10_resnet18")


@dataclass(frozen=True)
class Recipe:
    """A paper's optimisation: SGD settings, and its lr drops as fractions of its epochs."""

    source: str
    lr: float
    batch_size: int
    weight_decay: float
    momentum: float
    decays: tuple[float, ...]
    paper_epochs: int

    @classmethod
    def from_preset(cls, source: str, values: dict[str, Any]) -> Recipe:
        return cls(source, values["lr"], values["batch_size"], values["weight_decay"],
                   values.get("momentum", 0.9),
                   tuple(m / values["epochs"] for m in values["lr_milestones"]),
                   values["epochs"])

    def fields(self, epochs: int) -> dict[str, Any]:
        """TrialConfig fields for a run of ``epochs`` epochs."""
        return {"lr": self.lr, "batch_size": self.batch_size, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "schedule": "piecewise", "lr_gamma": 0.1,
                "lr_milestones": milestones(epochs, self.decays)}


@dataclass(frozen=True)
class Arm:
    defense: str
    params: dict[str, Any]
    recipe: Recipe


HE_RECIPE = Recipe.from_preset("HE Sec. 4 / Table 6", HE_PRESET)
LMA_RECIPE = Recipe.from_preset("LMA Sec. 5.1", LMA_PRESET)
# HE's lr 0.1 is for a WRN with BatchNorm; on the BN-free small_cnn its normalised features blow
# up (‖z‖ ≈ 2e6 after 2 epochs, accuracy at chance), so HE trains at LMA's (and TRADES' MNIST)
# lr 0.01 and keeps the rest of its recipe.
HE_SMALL_CNN = replace(HE_RECIPE, source="HE Sec. 4 / Table 6 at LMA's lr", lr=LMA_RECIPE.lr)
# Each paper compares its method with PGD-AT trained by the same recipe; so does this script:
# every method has its own PGD-AT control, identical but for the defense.
ARMS: dict[str, Arm] = {
    "PGD-AT (HE recipe)": Arm("pgd_at", {}, HE_SMALL_CNN),
    "PGD-AT+HE": Arm("he", HE_PRESET["defense_params"], HE_SMALL_CNN),
    "PGD-AT (LMA recipe)": Arm("pgd_at", {}, LMA_RECIPE),
    "LMA-AT": Arm("lma_at", LMA_PRESET["defense_params"], LMA_RECIPE),
}
CONTROL = {"PGD-AT+HE": "PGD-AT (HE recipe)", "LMA-AT": "PGD-AT (LMA recipe)"}
TRAIN_SET = 55_000  # MNIST's 60,000 training images minus the 5,000-image validation split

# (method, source, model, clean, PGD-20, AutoAttack or None, FAB or None), in %
REFERENCE = (
    (BASELINE, "HE Table 2", "WRN-34-10", 86.75, 53.97, None, 51.23),
    ("PGD-AT+HE", "HE Tables 2, 6", "WRN-34-10", 86.19, 59.36, 53.16, 54.45),
    (BASELINE, "LMA Table 4", "ResNet-18", 85.80, 52.05, 46.62, None),
    ("LMA-AT", "LMA Table 4", "ResNet-18", 83.56, 57.21, 49.10, None),
    (BASELINE, "LMA Table 5", "WRN-34-10", 86.46, 56.75, 51.06, None),
    ("LMA-AT", "LMA Table 5", "WRN-34-10", 85.39, 60.62, 52.61, None),
)


@dataclass(frozen=True)
class PaperDelta:
    """A paper's method − PGD-AT difference, in percentage points, from one of its tables."""

    source: str
    clean: float
    pgd: float
    autoattack: float
    autoattack_name: str = "AA"  # "FAB" where the paper has no AutoAttack for PGD-AT

    def describe(self, kind: str) -> str:
        name = {"clean": "clean", "pgd": "PGD-20", "autoattack": self.autoattack_name}[kind]
        return f"paper {self.source}: {name} {getattr(self, kind):+.2f} pp"


PAPER_DELTAS = {
    "PGD-AT+HE": (PaperDelta("HE Table 2", 86.19 - 86.75, 59.36 - 53.97, 54.45 - 51.23, "FAB"),),
    "LMA-AT": (PaperDelta("LMA Table 4", 83.56 - 85.80, 57.21 - 52.05, 49.10 - 46.62),
               PaperDelta("LMA Table 5", 85.39 - 86.46, 60.62 - 56.75, 52.61 - 51.06)),
}


@dataclass(frozen=True)
class Scale:
    """How far the run is shrunk: data, epochs, attack steps and evaluated points."""

    train_images: int
    epochs: int
    pgd_points: int
    aa_points: int
    val_images: int
    train_attack_steps: int = 10
    pgd_steps: int = 20
    square_queries: int = 5000
    aa_parts: tuple[str, ...] = ()  # () = AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square

    def describe(self) -> str:
        attack = ("AutoAttack standard" if not self.aa_parts
                  else f"AutoAttack parts {'+'.join(self.aa_parts)}")
        return (f"{self.epochs} epochs for every arm (HE trains {HE_RECIPE.paper_epochs}, "
                f"LMA {LMA_RECIPE.paper_epochs}), "
                f"{self.train_images:,} of {TRAIN_SET:,} training images, "
                f"{self.train_attack_steps}-step training PGD; PGD-{self.pgd_steps} on the first "
                f"{self.pgd_points:,} and {attack} (Square {self.square_queries:,} queries) on "
                f"the first {self.aa_points:,} of 10,000 test images; MNIST small_cnn in place "
                f"of CIFAR-10 WRN-34-10 / ResNet-18")


FULL = Scale(train_images=11_000, epochs=3, pgd_points=1_000, aa_points=100, val_images=200)
SMOKE = Scale(train_images=200, epochs=1, pgd_points=32, aa_points=16, val_images=32,
              train_attack_steps=2, pgd_steps=5, square_queries=50,
              aa_parts=("apgd-ce", "square"))


# --------------------------------------------------------------------------- configuration
def milestones(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """A paper's lr drops (e.g. epochs 75 and 90 of 100) at the same fractions of ``epochs``."""
    return sorted({round(f * epochs) for f in fractions} & set(range(1, epochs)))


def arm_config(name: str, scale: Scale, threads: int) -> TrialConfig:
    arm = ARMS[name]
    return TrialConfig.from_dict({
        "dataset": DATASET, "model": MODEL, "defense": arm.defense,
        "defense_params": dict(arm.params), "epsilon": EPSILON,
        "attack_steps": scale.train_attack_steps, "attack_step_size": TRAIN_STEP,
        **arm.recipe.fields(scale.epochs), "epochs": scale.epochs,
        "train_subset": scale.train_images,
        "val_subset": scale.val_images, "test_subset": scale.val_images,
        "eval_steps": scale.pgd_steps, "eval_step_size": EVAL_STEP, "seed": 0,
        "device": "cpu", "num_threads": threads})


def pgd_spec(scale: Scale) -> str:
    """PGD-k on CE with a uniform random start (TRADES' white-box evaluation)."""
    return f"pgd:steps={scale.pgd_steps},step_size={EVAL_STEP:g}"


def autoattack_spec(scale: Scale) -> str:
    parts = f"parts={'+'.join(scale.aa_parts)}," if scale.aa_parts else "version=standard,"
    return f"autoattack:{parts}square_queries={scale.square_queries}"


# --------------------------------------------------------------------------- evaluation
def check_he_logits(model: nn.Module, x: torch.Tensor) -> None:
    """HE is attacked on s·cosθ: its head must be the cosine head and |logits| ≤ s."""
    head = getattr(model, "head", None)
    if not isinstance(head, CosineHead) or head.angular:
        raise RuntimeError(f"the HE arm has head {type(head).__name__}, not s·cosθ")
    with torch.no_grad():
        largest = model(x[:256]).abs().max().item()
    if largest > head.scale * (1 + 1e-5):
        raise RuntimeError(f"HE logits reach {largest:.3f} > s = {head.scale}")


def evaluate_arm(name: str, model: nn.Module, scale: Scale) -> dict[str, dict[str, Any]]:
    """PGD-k on ``pgd_points`` test images; PGD-k and AutoAttack on the first ``aa_points``."""
    x, y = test_points(DATASET, max(scale.pgd_points, scale.aa_points))
    if ARMS[name].defense == "he":
        check_he_logits(model, x)
    say = lambda message: log(f"[{name}] {message}")  # noqa: E731
    pgd = evaluate_model(model, x[:scale.pgd_points], y[:scale.pgd_points],
                         attacks=[pgd_spec(scale)], epsilon=EPSILON, checks=False, progress=say)
    aa = evaluate_model(model, x[:scale.aa_points], y[:scale.aa_points],
                        attacks=[pgd_spec(scale), autoattack_spec(scale)], epsilon=EPSILON,
                        checks=False, progress=say)
    return {"pgd": pgd.to_dict(), "autoattack": aa.to_dict()}


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": stats["accuracy"], "ci": [stats["ci_low"], stats["ci_high"]],
            "n": stats["n"]}


def arm_row(name: str, reports: dict[str, dict[str, Any]], metrics: dict[str, Any],
            scale: Scale) -> dict[str, Any]:
    """One arm's accuracies (fractions, with 95% Wilson intervals), training curve and cost."""
    pgd, aa = reports["pgd"], reports["autoattack"]
    history = metrics.get("history", [])
    return {
        "arm": name, "defense": ARMS[name].defense, "recipe": ARMS[name].recipe.source,
        "clean": _summary(pgd["clean"]),
        "pgd": _summary(pgd["attacks"][pgd_spec(scale)]),
        "autoattack": _summary(aa["attacks"][autoattack_spec(scale)]),
        "worst_case": _summary(aa["worst_case"]),
        "clean_on_aa_points": _summary(aa["clean"]),
        "autoattack_seconds": aa["attacks"][autoattack_spec(scale)]["seconds"],
        "autoattack_flags": aa["flags"],
        "train_minutes": sum(metrics.get("seconds_per_epoch", [])) / 60,
        "validation": [{"epoch": m["epoch"], "clean": m.get("val_clean_accuracy"),
                        "pgd": m.get("val_robust_accuracy")} for m in history],
    }


# --------------------------------------------------------------------------- claims
def improvement_claim(method: str, kind: str, label: str, rows: dict[str, dict[str, Any]],
                      reports: dict[str, dict[str, Any]], spec: str) -> Claim:
    """``method`` beats PGD-AT under ``kind`` ("pgd" / "autoattack") on the point estimates;
    the evidence adds the paired exact McNemar test and the paper's own differences."""
    control = CONTROL[method]
    ours, base = rows[method][kind]["accuracy"], rows[control][kind]["accuracy"]
    test = compare_reports(reports[method], reports[control], attack=spec)
    paper = "; ".join(delta.describe(kind) for delta in PAPER_DELTAS[method])
    evidence = (f"{label} {percent(ours)}% vs {percent(base)}% (Δ {100 * (ours - base):+.2f} pp"
                f" on the same {test.n} points, {test.only_a} robust only under {method}, "
                f"{test.only_b} only under {control}, exact McNemar p = {test.p_value:.3g}, "
                f"{'' if test.significant() else 'not '}significant at 5%; {paper})")
    return Claim(f"{method} improves on {control} under {label} (L∞ ε = {EPSILON:g})",
                 ours > base, evidence)


def claims_for(kind: str, label: str, spec: str, rows: dict[str, dict[str, Any]],
               reports: dict[str, dict[str, dict[str, Any]]]) -> list[Claim]:
    by_arm = {name: arm_reports[kind] for name, arm_reports in reports.items()}
    return [improvement_claim(method, kind, label, rows, by_arm, spec) for method in PAPER_DELTAS]


# --------------------------------------------------------------------------- tables
def _with_ci(stats: dict[str, Any]) -> str:
    return f"{percent(stats['accuracy'])} [{percent(stats['ci'][0])}, {percent(stats['ci'][1])}]"


def ours_table(rows: dict[str, dict[str, Any]], scale: Scale) -> str:
    columns = [("arm", "arm"), ("recipe", "recipe"),
               ("clean", f"clean % (n={scale.pgd_points})"),
               ("pgd", f"PGD-{scale.pgd_steps} % (n={scale.pgd_points})"),
               ("autoattack", f"AutoAttack % (n={scale.aa_points})"),
               ("worst_case", f"worst case % (n={scale.aa_points})"),
               ("val", "validation clean / PGD by epoch %"), ("minutes", "train min")]
    cells = []
    for name, row in rows.items():
        curve = ", ".join(f"{percent(v['clean'])}/{percent(v['pgd'])}" for v in row["validation"])
        recipe = ARMS[name].recipe
        cells.append({"arm": name, "recipe": f"{recipe.source}: lr {recipe.lr:g}, batch "
                                             f"{recipe.batch_size}, wd {recipe.weight_decay:g}",
                      **{k: _with_ci(row[k]) for k in
                                      ("clean", "pgd", "autoattack", "worst_case")},
                      "val": curve, "minutes": f"{row['train_minutes']:.1f}"})
    return markdown_table(cells, columns)


def reference_table() -> str:
    columns = [("source", "source"), ("model", "model"), ("method", "method"),
               ("clean", "clean %"), ("pgd", "PGD-20 %"), ("aa", "AutoAttack %"),
               ("fab", "FAB %")]
    rows = [{"source": source, "model": model, "method": method, "clean": f"{clean:.2f}",
             "pgd": f"{pgd:.2f}", "aa": "not reported" if aa is None else f"{aa:.2f}",
             "fab": fab if fab is None else f"{fab:.2f}"}
            for method, source, model, clean, pgd, aa, fab in REFERENCE]
    return markdown_table(rows, columns)


def delta_table(rows: dict[str, dict[str, Any]], scale: Scale) -> str:
    """The papers' and our differences to PGD-AT, in percentage points."""
    columns = [("method", "method − its PGD-AT control"), ("source", "paper source"),
               ("p_clean", "paper Δclean"), ("p_pgd", "paper ΔPGD-20"),
               ("p_aa", "paper ΔAA-type"), ("clean", "our Δclean"),
               ("pgd", f"our ΔPGD-{scale.pgd_steps}"), ("autoattack", "our ΔAutoAttack")]
    cells = []
    for method, references in PAPER_DELTAS.items():
        ours = {kind: _delta(rows[method][kind], rows[CONTROL[method]][kind])
                for kind in ("clean", "pgd", "autoattack")}
        cells += [{"method": method, "source": ref.source, "p_clean": f"{ref.clean:+.2f}",
                   "p_pgd": f"{ref.pgd:+.2f}",
                   "p_aa": f"{ref.autoattack:+.2f} ({ref.autoattack_name})", **ours}
                  for ref in references]
    return markdown_table(cells, columns)


def _delta(stats: dict[str, Any], baseline: dict[str, Any]) -> str:
    return f"{100 * (stats['accuracy'] - baseline['accuracy']):+.2f}"


def claim_lines(claims: list[Claim]) -> str:
    return "\n".join(f"- {'yes' if c.holds else 'no'}: {c.text} — {c.evidence}" for c in claims)


# --------------------------------------------------------------------------- main
def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-images", type=int, help=f"default {FULL.train_images}")
    p.add_argument("--epochs", type=int, help=f"default {FULL.epochs}")
    p.add_argument("--pgd-points", type=int, help=f"default {FULL.pgd_points}")
    p.add_argument("--aa-points", type=int, help=f"default {FULL.aa_points}")


def chosen_scale(args: argparse.Namespace) -> Scale:
    scale = SMOKE if args.smoke else FULL
    changes = {"train_images": args.train_images, "epochs": args.epochs,
               "pgd_points": args.pgd_points, "aa_points": args.aa_points}
    return replace(scale, **{k: v for k, v in changes.items() if v is not None})


def run_arms(args: argparse.Namespace, scale: Scale
             ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """Train (or reuse) and evaluate every arm: table rows and evaluation reports, by arm."""
    rows, reports = {}, {}
    for name in ARMS:
        model, metrics = train_arm(name, arm_config(name, scale, args.threads), args.out,
                                   fresh=args.fresh)
        reports[name] = evaluate_arm(name, model, scale)
        rows[name] = arm_row(name, reports[name], metrics, scale)
    return rows, reports


def main() -> int:
    started = time.perf_counter()
    p = parser(PAPER, __doc__)
    add_scale_arguments(p)
    args = p.parse_args()
    setup(args)
    scale = chosen_scale(args)
    rows, reports = run_arms(args, scale)
    pgd_label = f"PGD-{scale.pgd_steps}"
    claims = claims_for("autoattack", "AutoAttack", autoattack_spec(scale), rows, reports)
    pgd_comparisons = claims_for("pgd", pgd_label, pgd_spec(scale), rows, reports)
    flags = {name: row["autoattack_flags"] for name, row in rows.items() if row["autoattack_flags"]}
    sections = [
        ("Paper (CIFAR-10, L∞ ε = 8/255)", reference_table()),
        (f"Ours (MNIST small_cnn, L∞ ε = {EPSILON:g}; 95% Wilson intervals)",
         ours_table(rows, scale)),
        ("Differences to the matched PGD-AT control (percentage points)",
         delta_table(rows, scale)),
        (f"{pgd_label} comparisons (printed, not part of the verdict)",
         claim_lines(pgd_comparisons)),
        ("AutoAttack integrity flags", "\n".join(f"- {k}: {v}" for k, v in flags.items())
         or "none"),
    ]
    results = {"arms": rows, "scale_settings": asdict(scale), "epsilon": EPSILON,
               "attacks": {"pgd": pgd_spec(scale), "autoattack": autoattack_spec(scale)},
               "recipes": {name: {"source": arm.recipe.source,
                                  **arm.recipe.fields(scale.epochs)}
                           for name, arm in ARMS.items()},
               "reference": [list(r) for r in REFERENCE],
               "pgd_comparisons": [asdict(c) for c in pgd_comparisons]}
    return finish(PAPER, args, sections=sections, claims=claims, scale=scale.describe(),
                  results=results, started=started)


if __name__ == "__main__":
    raise SystemExit(main())
