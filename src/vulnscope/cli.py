"""The ``vulnscope`` command line.

The CLI owns the terminal: the library logs and warns, the CLI turns that into short
lines. A user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vulnscope import __version__
from vulnscope.errors import VulnscopeError

if TYPE_CHECKING:
    from vulnscope.audit import AuditResult

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """A bad command line, reported in one line with exit status 2."""


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage plus a message."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message}")


def _numbers(text: str, example: str) -> list[float]:
    """Comma-separated finite numbers, at least one."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as {example}, got {text!r}"
        ) from None
    if not values or any(value != value or abs(value) == float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _eps_list(text: str) -> list[float]:
    values = _numbers(text, "0.05,0.1")
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected finite budgets >= 0, got {text!r}")
    return values


def _named_list(kind: str, choices: Callable[[], Sequence[str]]) -> Callable[[str], list[str]]:
    """A parser of comma-separated names from ``choices()`` (read when first parsing)."""

    def parse(text: str) -> list[str]:
        known = list(choices())
        names = [part.strip().lower() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in known]
        if not names or unknown:
            shown = repr(unknown[0]) if unknown else repr(text)
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {shown}; choose a comma-separated list from {', '.join(known)}"
            )
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"a{'n' if kind[0] in 'aeiou' else ''} {kind} is listed twice in {text!r}"
            )
        return names

    return parse


def _cascade_attacks() -> Sequence[str]:
    from vulnscope.evaluate import CASCADE_ATTACKS

    return list(CASCADE_ATTACKS)


def _audit_stages() -> Sequence[str]:
    from vulnscope.audit import STAGES

    return list(STAGES)


_attack_list = _named_list("attack", _cascade_attacks)
_stage_list = _named_list("stage", _audit_stages)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number >= 1, got 0")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="vulnscope",
        description="How easily can small changes to a classifier's input be turned against it?",
    )
    parser.add_argument("--version", action="version", version=f"vulnscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_audit(commands)
    _add_rg(commands)
    _add_diagnose(commands)
    _add_clone(commands)
    _add_defend(commands)
    return parser


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of the core function a command runs: the CLI shows the same."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _joined(values: Sequence[Any]) -> str:
    """``0.1,0.25`` or ``linf,l2``: how a comma-separated option shows its values."""
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def _add_audit(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from vulnscope.audit import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_EPSILONS,
        DEFAULT_EVALUATION,
        EVALUATIONS,
        QUICK,
        STAGES,
    )
    from vulnscope.audit.budgets import CONVENTIONAL_BUDGETS
    from vulnscope.audit.stages.minimal import QUICK_MINIMAL_ATTACKS
    from vulnscope.evaluate import CASCADE_ATTACKS, DEFAULT_CASCADE

    audit = commands.add_parser(
        "audit",
        help="the full audit of a model: results.json, report.html and figures",
        description="Audit a classifier (the embedded digits CNN when no model is given): "
        "clean accuracy, then each stage that applies to the model: "
        + "; ".join(STAGES.values())
        + f". The robust accuracy runs the cascade {_joined(DEFAULT_CASCADE)} on the "
        "points still robust. Writes results.json, a self-contained report.html and the "
        "figures to --out.",
    )
    _add_model_and_data_arguments(audit)
    audit.add_argument(
        "--stages",
        type=_stage_list,
        help=f"comma-separated stages to run, from {_joined(list(STAGES))} "
        "(default: all that apply to the model)",
    )
    audit.add_argument(
        "--quick",
        action="store_true",
        help=f"a fast first look: the first {QUICK.samples} samples, "
        f"{_joined(QUICK.attacks)}, minimal perturbations by "
        f"{_joined(QUICK_MINIMAL_ATTACKS)} alone, {QUICK.geometry_samples} geometry inputs",
    )
    audit.add_argument(
        "--linf-eps",
        type=_eps_list,
        help="comma-separated L-inf budgets, for inputs in [0, 1] (default: three chosen from "
        "the model's minimal perturbations, beside a known data set's conventional ones, "
        f"e.g. MNIST's {_joined(CONVENTIONAL_BUDGETS['mnist'][1]['linf'])}; for the digits "
        f"{_joined(DEFAULT_EPSILONS['linf'])} alone)",
    )
    audit.add_argument(
        "--l2-eps",
        type=_eps_list,
        help="comma-separated L2 budgets (default: as --linf-eps; "
        f"{_joined(DEFAULT_EPSILONS['l2'])} for the digits)",
    )
    others = [name for name in CASCADE_ATTACKS if name not in DEFAULT_CASCADE]
    audit.add_argument(
        "--attacks",
        type=_attack_list,
        default=None,
        help="comma-separated cascade, run in order on the points still robust (default "
        f"{_joined(DEFAULT_CASCADE)}; also {', '.join(others)})",
    )
    audit.add_argument(
        "--evaluation",
        choices=EVALUATIONS,
        default=DEFAULT_EVALUATION,
        help="how the robustness stages attack: 'adaptive' (default: the cascade scheduled "
        "from what it learns, certified points skipped; the same robust accuracy in a "
        "fraction of the time) or 'standard' (AutoAttack's, comparable with published figures)",
    )
    audit.add_argument(
        "--out", default="vulnscope-audit", type=Path, help="output directory (default %(default)s)"
    )
    audit.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    audit.add_argument(
        "--limit",
        type=_positive_int,
        help="evaluate only the first LIMIT samples (with --quick too, instead of its "
        f"{QUICK.samples})",
    )
    audit.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="samples per attack call and per checkpointed chunk (default %(default)s)",
    )
    audit.add_argument("--device", help="where to run: cpu (default), cuda, cuda:1, mps")
    audit.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="processes sharing the audit on this machine, with the same results for any "
        "number (default 'auto': on the CPU, one per usable core, or per OMP_NUM_THREADS "
        "cores when set, at most one per piece of work; 1 on a GPU; 1: this process "
        "alone); under torchrun, its ranks are the workers",
    )
    # continuing is the default now; --resume stays accepted for the scripts that pass it
    audit.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    _add_fresh_argument(
        audit, "the chunks and stages an interrupted audit finished (kept in OUT/.checkpoint)"
    )
    audit.set_defaults(handler=_run_audit)


def _add_rg(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from vulnscope.rg import OPERATOR_CHOICES
    from vulnscope.rg.job import run_rg

    defaults = _defaults(run_rg)
    rg = commands.add_parser(
        "rg",
        help="renormalisation-group analysis of a deep RBM on the digits; writes rg.json",
        description="Train (or load from the cache) a deep RBM classifier of the binarised "
        "digits, estimate each layer's stability matrix by Monte Carlo RG, the chain-rule "
        "Fisher information and its dangerous directions, the class-change distances, and "
        "a study against depth; write rg.json and PNG figures.",
    )
    rg.add_argument(
        "--depth",
        type=_positive_int,
        default=defaults["depth"],
        help="RBMs in the network, >= 2 (default %(default)s)",
    )
    rg.add_argument(
        "--width",
        type=_positive_int,
        default=defaults["width"],
        help="units per hidden layer (default %(default)s)",
    )
    rg.add_argument(
        "--operators",
        default=defaults["operators"],
        choices=OPERATOR_CHOICES,
        help="operator set of the hidden levels (default %(default)s)",
    )
    rg.add_argument(
        "--samples",
        type=_positive_int,
        default=defaults["samples"],
        help="chains per input (default %(default)s)",
    )
    rg.add_argument(
        "--limit",
        type=_positive_int,
        default=defaults["limit"],
        help="test images analysed (default %(default)s)",
    )
    rg.add_argument(
        "--depths",
        type=_depth_list,
        default=list(defaults["depths"]),
        help="depths of the depth study, comma-separated ('' to skip; default "
        f"{_joined(defaults['depths'])})",
    )
    rg.add_argument(
        "--seed",
        type=_non_negative_int,
        default=defaults["seed"],
        help="seed (default %(default)s)",
    )
    rg.add_argument("--out", default="vulnscope-rg", type=Path, help="output directory")
    _add_fresh_argument(rg, "the depths an interrupted run finished (kept in OUT/.checkpoint)")
    rg.set_defaults(handler=_run_rg)


def _add_diagnose(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from vulnscope.diagnostics.job import run_diagnostics

    defaults = _defaults(run_diagnostics)
    diagnose = commands.add_parser(
        "diagnose",
        help="geometry diagnostics of a model; writes diagnostics.json and figures",
        description="On a random sample of the data: the input Fisher information and its "
        "dangerous direction v_1, the input Hessian of the loss (top eigenvalues, trace, "
        "Frobenius norm, eigenvalue profile), the curvature bounds on the minimal "
        "perturbation, class-change distances along v_1, the gradient and random "
        "directions, layer amplification and decision-boundary sections.",
    )
    _add_model_and_data_arguments(diagnose)
    diagnose.add_argument(
        "--samples",
        type=_positive_int,
        default=defaults["samples"],
        help="inputs analysed (default %(default)s)",
    )
    diagnose.add_argument(
        "--k",
        type=_positive_int,
        default=defaults["k"],
        help="eigenpairs per spectrum (default %(default)s)",
    )
    diagnose.add_argument(
        "--max-distance",
        type=_positive_float,
        default=defaults["max_distance"],
        help="largest L2 distance searched for a class change (default %(default)s)",
    )
    diagnose.add_argument(
        "--sections",
        type=_non_negative_int,
        default=defaults["sections"],
        help="decision-boundary sections drawn (default %(default)s)",
    )
    diagnose.add_argument(
        "--seed",
        type=_non_negative_int,
        default=defaults["seed"],
        help="seed (default %(default)s)",
    )
    diagnose.add_argument("--out", default="vulnscope-diagnose", type=Path, help="output directory")
    diagnose.set_defaults(handler=_run_diagnose)


def _add_clone(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from vulnscope.cloning.job import QUERY_CHOICES, VICTIM_CHOICES, run_clone
    from vulnscope.cloning.presets import DEFAULT_SIZE, QUICK
    from vulnscope.cloning.rbm_clone import CLONE_METHODS
    from vulnscope.cloning.study import DEFENCE_NAMES

    defaults = _defaults(run_clone)
    clone = commands.add_parser(
        "clone",
        help="extraction attacks against output defences; writes clone.json and a figure",
        description="For each victim (the deep RBM network and the digits CNN), each output "
        "defence (Fisher poisoning, a random perturbation of the same L1 size, MAD, reverse "
        "sigmoid, rounding, top-1 label only) at each L1 budget, and each seed: the "
        "legitimate users' utility, then a clone trained on the published outputs, its test "
        "accuracy, agreement with the victim and the transfer rate of PGD examples crafted "
        "on it. Finished cells are kept in OUT/cells and reused by a rerun.",
    )
    clone.add_argument(
        "--victims",
        type=_choice_list(VICTIM_CHOICES),
        default=list(defaults["victims"]),
        help=f"comma-separated (default {_joined(defaults['victims'])})",
    )
    clone.add_argument(
        "--defences",
        type=_choice_list(DEFENCE_NAMES),
        default=list(defaults["defences"]),
        help=f"comma-separated, from {_joined(DEFENCE_NAMES)} (default all)",
    )
    # budgets, seeds and epochs default to None: run_clone takes them from its preset
    clone.add_argument(
        "--budgets",
        type=_budget_list,
        help=f"mean L1 budgets, comma-separated (default {_joined(DEFAULT_SIZE.budgets)})",
    )
    clone.add_argument(
        "--seeds", type=_positive_int, help=f"repetitions (default {DEFAULT_SIZE.seeds})"
    )
    clone.add_argument(
        "--queries",
        default=defaults["queries"],
        choices=QUERY_CHOICES,
        help="the attacker's inputs (default %(default)s)",
    )
    clone.add_argument("--query-budget", type=_positive_int, help="queries the attacker may make")
    clone.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"clone training epochs (default {DEFAULT_SIZE.epochs})",
    )
    clone.add_argument(
        "--cloner",
        default=defaults["cloner"],
        choices=CLONE_METHODS,
        help="how the deep-RBM clone is trained (default %(default)s)",
    )
    clone.add_argument(
        "--quick",
        action="store_true",
        help=f"a fast pass: {QUICK.seeds} seeds, budgets {_joined(QUICK.budgets)}, "
        f"{QUICK.epochs} epochs, where those options are not given",
    )
    _add_fresh_argument(clone, "the finished cells (kept in OUT/cells)")
    clone.add_argument(
        "--seed",
        type=_non_negative_int,
        default=defaults["seed"],
        help="seed (default %(default)s)",
    )
    clone.add_argument("--out", default="vulnscope-clone", type=Path, help="output directory")
    clone.set_defaults(handler=_run_clone)


def _add_defend(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    from vulnscope.defences.digits import DEFENCE_METHODS, PROVABLE_EPOCHS, defend_digits
    from vulnscope.models.cache import PRETRAINED

    defaults = _defaults(defend_digits)
    defend = commands.add_parser(
        "defend",
        help="train a defended digits CNN and save it as a TorchScript model file",
        description="Train the reference digits CNN with one defence (PGD, fast FGSM or "
        "TRADES adversarial training, defensive distillation, CURE, Parseval, Manifold "
        "Mixup, MagNet's detectors and reformer, or provable training: IBP, CROWN-IBP, "
        "Wong-Kolter) and save it as a TorchScript file that 'vulnscope audit --model "
        "FILE' reads.",
    )
    from vulnscope.detect.registry import DETECTORS

    defend.add_argument(
        "--method",
        required=True,
        choices=[*DEFENCE_METHODS, *DETECTORS],
        help="the defence, or a detector (fitted on the reference CNN and stored in its "
        "model file, which the audit's detect stage evaluates)",
    )
    defend.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    defend.add_argument(
        "--eps",
        type=_positive_float,
        default=defaults["eps"],
        help="Linf radius of pgd, fgsm, trades, ibp, crown-ibp and wong-kolter training "
        "(default %(default)s)",
    )
    defend.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"training epochs (default {PRETRAINED['digits-cnn'][1].epochs}; "
        + ", ".join(f"{epochs} for {method}" for method, epochs in PROVABLE_EPOCHS.items())
        + ")",
    )
    defend.add_argument(
        "--dropout",
        type=_probability,
        default=defaults["dropout"],
        help="dropout on every activation while training, in [0, 1) (default %(default)s)",
    )
    defend.add_argument(
        "--temperature",
        type=_positive_float,
        default=defaults["temperature"],
        help="distillation temperature (default %(default)s)",
    )
    defend.add_argument(
        "--beta",
        type=_positive_float,
        default=defaults["beta"],
        help="TRADES weight (default %(default)s)",
    )
    defend.add_argument(
        "--seed",
        type=_non_negative_int,
        default=defaults["seed"],
        help="seed (default %(default)s)",
    )
    _add_fresh_argument(defend, "the model OUT holds, trained with other options")
    defend.set_defaults(handler=_run_defend)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _choice_list(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [value for value in values if value not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated names from {','.join(choices)}, got {text!r}"
            )
        return list(dict.fromkeys(values))

    return parse


def _budget_list(text: str) -> list[float]:
    values = _eps_list(text)
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected budgets > 0, got {text!r}")
    return values


def _add_model_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    from vulnscope.models.cache import PRETRAINED, pretrained
    from vulnscope.models.loading import DEEP_RBM

    parser.add_argument(
        "--model",
        default=_defaults(pretrained)["name"],
        help=f"a reference model ({', '.join(map(repr, PRETRAINED))}; default %(default)r), "
        f"{DEEP_RBM!r} (a deep RBM: adds the RG stage), 'package.module:factory', a "
        "TorchScript file, a torch.export program (.pt2), or an ONNX model (.onnx; needs "
        "pip install 'vulnscope[onnx]')",
    )
    parser.add_argument("--weights", help="weights for --model: .safetensors or a torch state dict")
    parser.add_argument(
        "--mean",
        type=_float_list,
        help="per-channel mean the model normalises its input with, e.g. 0.485,0.456,0.406 "
        "(applied inside the model, so budgets stay in pixel units)",
    )
    parser.add_argument("--std", type=_float_list, help="per-channel std, with --mean")
    parser.add_argument(
        "--data",
        default="digits",
        help="'digits' (the embedded test split, default); 'fashion-mnist' (sudo apt install "
        "dataset-fashion-mnist), 'mnist' or 'cifar10', read from installed files (test "
        "split; add ':train' for the training split); an .npz file with arrays x, y and "
        "optionally class_names; 'IMAGES,LABELS' IDX files; or a folder with one "
        "sub-folder of images per class",
    )


def _float_list(text: str) -> list[float]:
    return _numbers(text, "0.5,0.5,0.5")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _depth_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated depths such as 2,3,4, got {text!r}"
        ) from None
    if any(value < 2 for value in values):
        raise argparse.ArgumentTypeError(f"expected depths >= 2, got {text!r}")
    return values


def _add_fresh_argument(parser: argparse.ArgumentParser, kept: str) -> None:
    """The one flag of every resumable subcommand that discards its checkpoint."""
    from vulnscope._checkpoint import FRESH_FLAG

    parser.add_argument(
        FRESH_FLAG,
        action="store_true",
        help=f"start over: discard {kept}; without it a rerun with the same options "
        "continues from them, and one with other options is refused",
    )


def _run_rg(args: argparse.Namespace) -> int:
    from vulnscope.rg.job import run_rg

    args.interrupted_hint = "rerun the same command to continue from the finished depths"
    record = run_rg(
        args.out,
        depth=args.depth,
        width=args.width,
        operators=args.operators,
        samples=args.samples,
        limit=args.limit,
        depths=args.depths,
        seed=args.seed,
        resume=not args.fresh,
    )
    summary = record["analysis"]["summary"]
    print(
        f"deep RBM, depth {args.depth}, width {args.width}: test accuracy "
        f"{record['network']['test_accuracy_sampled']:.1%} (sampled pass)"
    )
    for row in summary["layers"]:
        print(
            f"  T^({row['layer']}): leading {row['kind']} {row['leading_mean']:.3g} "
            f"± {row['leading_stderr_over_inputs']:.2g}"
        )
    distances = summary["class_change_distance_median"]
    print(
        "  median L2 distance to a class change: "
        + ", ".join(
            f"{name} {value:.3g}" if value is not None else f"{name} none"
            for name, value in distances.items()
        )
    )
    for row in record.get("depth_study", {}).get("rows", []):
        print(
            f"  depth {row['depth']}: accuracy {row['test_accuracy']:.1%}, "
            f"||P|| {row['product_norm_mean']:.3g}, distance along v1 "
            f"{_distance(row['class_change_distance_median']['fisher'])}"
        )
    print(f"wrote {args.out / 'rg.json'}")
    return 0


def _distance(value: float | None) -> str:
    """A class-change distance to 3 significant digits (None: no change found)."""
    return "none found" if value is None else f"{value:.3g}"


def _print_summary(result: AuditResult) -> None:
    print(
        f"{result.model.name} on {result.data.source} ({result.data.samples} samples): "
        f"clean accuracy {result.clean_accuracy:.1%}"
    )
    from vulnscope.audit import registered_stages

    stages = registered_stages()
    budgets = result.settings.budgets
    used = {norm for name in result.results for norm in stages[name].budget_norms}
    for norm in ("linf", "l2"):
        if budgets is not None and norm in used:
            print(f"{norm} budgets {', '.join(budgets[norm].labels)}: {budgets[norm].how}")
    for name, value in result.results.items():
        for line in stages[name].summary(value):
            print(line)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"verdict: {result.verdict.headline}")


def _load_model_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from vulnscope.data import load_data
    from vulnscope.models.loading import DEEP_RBM, load_model

    if ":" in args.model and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that 'mymodels:build' finds ./mymodels.py
    if (args.mean is None) != (args.std is None):
        raise _UsageError("vulnscope: error: --mean and --std go together: give both or neither")
    if args.model == DEEP_RBM and args.data == "digits":
        from vulnscope.rbm.pretrained import binarized_digits

        data = binarized_digits("test")  # what the deep RBM was trained on
    else:
        data = load_data(args.data, seed=args.seed)
    model = load_model(args.model, weights=args.weights, seed=args.seed)
    model = _with_detector(args.model, model)
    if args.mean is not None:
        from vulnscope.models.normalized import Normalized

        model = Normalized(model, args.mean, args.std)
    return model, data


def _with_detector(spec: str, model: Any) -> Any:
    """``model`` with the detector its TorchScript file holds (``vulnscope defend``), if any."""
    if not spec.endswith((".pt", ".pth", ".torchscript")) or not Path(spec).is_file():
        return model
    from vulnscope.models.saving import DETECTOR_FILE_NAME, torchscript_extra

    try:
        holds = bool(torchscript_extra(spec, DETECTOR_FILE_NAME))
    except VulnscopeError:
        return model  # not a TorchScript file: no detector inside
    if not holds:
        return model
    from vulnscope.detect.detected import load_detected

    return load_detected(spec, model) or model


def _run_diagnose(args: argparse.Namespace) -> int:
    from vulnscope.diagnostics.job import run_diagnostics

    model, data = _load_model_and_data(args)
    args.out.mkdir(parents=True, exist_ok=True)  # fail before the work, not after it
    record = run_diagnostics(
        model,
        data,
        args.out,
        model_name=args.model,
        samples=args.samples,
        k=args.k,
        max_distance=args.max_distance,
        sections=args.sections,
        seed=args.seed,
    )
    fisher, hessian = record["fisher"], record["hessian"]
    print(
        f"{args.model} on {record['data']['source']} ({record['data']['samples']} inputs): "
        f"clean accuracy {record['clean_accuracy']:.1%}"
    )
    print(
        f"  input Fisher: median top eigenvalue {fisher['eigenvalue_median'][0]:.3g}, "
        f"median trace {fisher['trace_median']:.3g}"
    )
    print(
        f"  input Hessian: median top |eigenvalue| {abs(hessian['eigenvalue_median'][0]):.3g}, "
        f"median Frobenius norm {hessian['frobenius_median']:.3g}"
    )
    distances = record["class_change_distance"]
    found = ", ".join(
        f"{name} {row['median']:.3g}" if row["median"] is not None else f"{name} none"
        for name, row in distances.items()
    )
    print(f"  median L2 distance to a class change: {found} (up to {args.max_distance:g})")
    bracketed = record["curvature_bounds"]["bracketed_fraction"]
    if bracketed is not None:
        print(
            f"  curvature bounds (quadratic model) bracket the measured distance for "
            f"{bracketed:.0%} of the inputs"
        )
    if "amplification" in record:
        growth = record["amplification"]
        print(
            f"  growth to the logits: along v1 {growth['growth_fisher_median'][-1]:.3g}x, "
            f"random {growth['growth_random_median'][-1]:.3g}x"
        )
    print(f"wrote {args.out / 'diagnostics.json'}")
    return 0


def _run_clone(args: argparse.Namespace) -> int:
    from vulnscope.cloning.job import run_clone

    args.out.mkdir(parents=True, exist_ok=True)  # fail before the work, not after it
    record = run_clone(
        args.out,
        victims=args.victims,
        budgets=args.budgets,
        seeds=args.seeds,
        defences=args.defences,
        queries=args.queries,
        query_budget=args.query_budget,
        epochs=args.epochs,
        cloner=args.cloner,
        quick=args.quick,
        seed=args.seed,
        resume=not args.fresh,
    )
    _print_clone_table(record)
    print(f"wrote {args.out / 'clone.json'} and {args.out / record['figures']['clone_damage']}")
    return 0


def _print_clone_table(record: dict[str, Any]) -> None:
    def cell(value: dict[str, Any]) -> str:
        if value["mean"] is None:
            return f"{'-':>13}"
        spread = value["half_width"]
        return f"{value['mean']:>7.3f}" + (f"±{spread:<5.3f}" if spread is not None else " " * 6)

    seeds = record["settings"]["seeds"]
    for victim, about in record["victims"].items():
        print(
            f"{victim}: victim test accuracy {about['test_accuracy']:.1%}; "
            f"means over {seeds} seeds ± 95% interval"
        )
        print(
            f"  {'defence':<22}{'mean L1':>13}{'top-1 kept':>13}{'clone acc':>13}"
            f"{'agreement':>13}{'transfer':>13}"
        )
        for row in record["rows"]:
            if row["victim"] != victim:
                continue
            print(
                f"  {row['key']:<22}"
                + "".join(
                    cell(row[m])
                    for m in (
                        "mean_l1",
                        "top1_agreement",
                        "clone_accuracy",
                        "clone_agreement",
                        "transfer_rate",
                    )
                )
            )

    def difference(value: dict[str, Any]) -> str:
        if value["ci_low"] is None:
            return f"{value['mean']:+.3f}"
        return f"{value['mean']:+.3f} [{value['ci_low']:+.3f}, {value['ci_high']:+.3f}]"

    for row in record["fisher_vs_random"]:
        print(
            f"  {row['victim']} budget {row['budget']:g}, {row['defence']} minus random: "
            f"clone accuracy "
            f"{difference(row['clone_accuracy'])}, transfer "
            f"{difference(row['transfer_rate'])}"
        )


def _run_defend(args: argparse.Namespace) -> int:
    from vulnscope.data import load_digits
    from vulnscope.defences.digits import defend_digits
    from vulnscope.evaluate import accuracy
    from vulnscope.models.saving import save_torchscript

    if args.out.is_dir():
        raise VulnscopeError(f"--out {args.out} is a directory; give the model file to write")
    args.out.parent.mkdir(parents=True, exist_ok=True)  # fail before the work, not after it
    options = {
        "eps": args.eps,
        "epochs": args.epochs,
        "dropout": args.dropout,
        "temperature": args.temperature,
        "beta": args.beta,
        "seed": args.seed,
    }
    from vulnscope.detect.registry import DETECTORS

    stored = None if args.fresh else _defended_record(args.out)
    if stored is not None:  # the finished model: kept when asked again, never replaced
        from vulnscope._checkpoint import FRESH_FLAG, check_same_settings
        from vulnscope.defences.digits import defence_settings

        if args.method in DETECTORS:
            from vulnscope.detect.digits import DETECTOR_FPR

            detector = {"detector": DETECTORS[args.method]().settings()}
            given = {"method": args.method, **detector, "fpr": DETECTOR_FPR, "seed": args.seed}
        else:
            given = {"method": args.method} | defence_settings(args.method, **options)
        check_same_settings(str(args.out), stored, given)
        print(f"{args.method}: {args.out} already holds this model; {FRESH_FLAG} retrains it")
        print(f"audit it with: vulnscope audit --model {args.out}")
        return 0
    if args.method in DETECTORS:
        return _fit_detector(args)
    defended = defend_digits(args.method, **options)
    test = load_digits("test")
    clean = accuracy(defended.model, test.x, test.y)
    metadata = {"method": args.method, "settings": defended.settings, "test_accuracy": clean}
    save_torchscript(defended.model, args.out, metadata=metadata)
    print(f"{args.method}: test accuracy {clean:.1%}; wrote {args.out}")
    print(f"audit it with: vulnscope audit --model {args.out}")
    return 0


def _fit_detector(args: argparse.Namespace) -> int:
    """``vulnscope defend --method <detector>``: the reference CNN with a fitted detector."""
    from vulnscope.data import load_digits
    from vulnscope.detect.detected import save_detected
    from vulnscope.detect.digits import detect_digits
    from vulnscope.evaluate import accuracy

    fitted = detect_digits(args.method, seed=args.seed)
    test = load_digits("test")
    clean = accuracy(fitted.classifier, test.x, test.y)
    flagged = float(fitted.detector.flags(test.x).float().mean())
    metadata = {"method": args.method, "settings": fitted.settings, "test_accuracy": clean}
    save_detected(fitted.classifier, fitted.detector, args.out, metadata=metadata)
    print(
        f"{args.method}: test accuracy {clean:.1%}; the detector flags {flagged:.1%} of the "
        f"clean test images (threshold set at {fitted.settings['fpr']:.0%} on held-out "
        f"training images); wrote {args.out}"
    )
    print(f"audit it with: vulnscope audit --model {args.out}")
    return 0


def _defended_record(path: Path) -> dict[str, Any] | None:
    """The method and settings of a model file ``vulnscope defend`` wrote (else None)."""
    if not path.is_file():
        return None
    from vulnscope.models.saving import torchscript_metadata

    try:
        metadata = torchscript_metadata(path)
    except VulnscopeError:
        return None  # not a model file of ours: replaced, as before
    settings = metadata.get("settings")
    if not isinstance(settings, dict) or "method" not in metadata:
        return None
    return {"method": metadata["method"], **settings}


def _workers(text: str) -> int | None:
    """A number of workers; None for 'auto', which the job decides (:func:`auto_workers`)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (or 'auto')") from None


def _run_audit(args: argparse.Namespace) -> int:
    import torch

    from vulnscope import launch
    from vulnscope.audit import audit
    from vulnscope.distributed import PeerLostError, check_local_gpus, rank_and_world

    model, data = _load_model_and_data(args)  # in the launcher too: fail once, warm the cache
    if args.limit is not None:
        data = data.take(args.limit)
    if args.resume and args.fresh:
        raise _UsageError("vulnscope audit: error: --resume and --fresh contradict each other")
    args.interrupted_hint = "rerun the same command to continue from the finished chunks"
    workers, threads = args.workers, None
    if "WORLD_SIZE" in os.environ:  # under torchrun: every local rank got this --device
        try:
            device: torch.device | None = torch.device(args.device or "cpu")
        except (RuntimeError, TypeError):
            device = None  # audit() names a malformed device
        local = os.environ.get("LOCAL_WORLD_SIZE", "")
        if device is not None and local.isdigit():
            check_local_gpus(device, int(local))
    else:
        from vulnscope.audit import audit_pieces

        # checked here, so that a misfit fails once, before any worker starts
        pieces = audit_pieces(
            model,
            data,
            stages=args.stages,
            quick=args.quick,
            batch_size=args.batch_size,
            device=args.device,
            samples=args.limit,
        )
        limit = launch.worker_limit(pieces)
        if workers is None:
            workers = launch.auto_workers(pieces, device=args.device)
        elif workers > limit:
            cores = launch.usable_cores()
            print(
                f"vulnscope: --workers {workers} capped to {limit} ({pieces} piece"
                f"{'s' * (pieces != 1)} of work, {cores} usable core{'s' * (cores != 1)})",
                file=sys.stderr,
            )
            workers = limit
        if torch.device(args.device or "cpu").type == "cpu":
            # threads that do not follow the workers: the same record for any number
            threads = launch.worker_threads(pieces)
        if workers > 1:
            check_local_gpus(torch.device(args.device or "cpu"), workers)
            # rank 0 has the terminal: its bars, its summary, its errors
            return launch.run_local_workers(
                args.argv, workers, threads=threads, resume_hint=args.interrupted_hint
            )
    epsilons = {
        norm: values for norm, values in (("linf", args.linf_eps), ("l2", args.l2_eps)) if values
    }
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # and back after: main() may run in a caller's process
    try:
        result = audit(
            model,
            data,
            model_name=args.model,
            stages=args.stages,
            quick=args.quick,
            epsilons=epsilons,
            attacks=args.attacks,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            out=args.out,
            resume=not args.fresh,
            progress=None,
            model_metadata=_model_metadata(args.model),
            evaluation=args.evaluation,
            samples=args.limit,
        )
    except PeerLostError:
        if launch.launched():  # the launcher names the worker that stopped first
            return launch.LOST_PEER_STATUS
        raise
    finally:
        torch.set_num_threads(previous)
    if rank_and_world()[0] == 0:  # under torchrun, audit() joined the process group
        _print_summary(result)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'}")
    return 0


def _model_metadata(spec: str) -> dict[str, Any] | None:
    """What a TorchScript file written by ``vulnscope defend`` says about its model."""
    path = Path(spec)
    if not path.is_file() or path.suffix in (".pt2", ".onnx"):
        return None
    from vulnscope.models.saving import torchscript_metadata

    try:
        return torchscript_metadata(path) or None
    except VulnscopeError:
        return None


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"vulnscope: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vulnscope: %(message)s"))
    library_logger = logging.getLogger("vulnscope")
    library_logger.addHandler(handler)
    previous_level = library_logger.level
    library_logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return _dispatch(parser, argv)
    finally:
        library_logger.removeHandler(handler)
        library_logger.setLevel(previous_level)


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        status: int = args.handler(args)
        return status
    except _UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except VulnscopeError as error:
        print(f"vulnscope: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"vulnscope: error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted_hint", None)
        print("vulnscope: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
