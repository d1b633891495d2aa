"""Every public name imports and is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC_MODULES = [
    "vulnscope",
    "vulnscope.attacks",
    "vulnscope.certify",
    "vulnscope.certify.bounds",
    "vulnscope.cloning",
    "vulnscope.data",
    "vulnscope.defences",
    "vulnscope.defences.digits",
    "vulnscope.detect",
    "vulnscope.diagnostics",
    "vulnscope.errors",
    "vulnscope.evaluate",
    "vulnscope.explain",
    "vulnscope.models",
    "vulnscope.audit",
    "vulnscope.report",
    "vulnscope.models.onnx_program",
    "vulnscope.perturbations",
    "vulnscope.rbm",
    "vulnscope.rg",
]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_imports_and_has_a_docstring(module_name):
    module = importlib.import_module(module_name)
    assert module.__doc__
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module_name}.{name} has no docstring"


def test_issue_contract_names_exist():
    from vulnscope.attacks import (  # noqa: F401
        APGD,
        BIM,
        FAB,
        FGSM,
        JSMA,
        LBFGS,
        PGD,
        CarliniWagner,
        DeepFool,
        FisherAttack,
        Square,
        UniversalPerturbation,
    )
    from vulnscope.certify import Certificate, certified_radius, certify  # noqa: F401
    from vulnscope.cloning import (  # noqa: F401
        MAD,
        FisherPoisoning,
        LabelOnly,
        RandomPoisoning,
        ReverseSigmoid,
        Rounding,
        extract,
    )
    from vulnscope.defences import StackedDenoisingAutoencoder, train_sdae  # noqa: F401
    from vulnscope.detect import (  # noqa: F401
        DETECTORS,
        DetectionReport,
        Detector,
        evaluate_detector,
        load_detector,
        save_detector,
    )
    from vulnscope.diagnostics import input_fisher, input_hessian_eigenvalues  # noqa: F401
    from vulnscope.evaluate import robust_accuracy, standard_evaluation  # noqa: F401
    from vulnscope.explain import (  # noqa: F401
        concept_atlas,
        counterfactual,
        crp,
        lrp,
        non_robust_dataset,
        unit_analysis,
    )
    from vulnscope.perturbations import (  # noqa: F401
        StAdv,
        TransformResult,
        noise_robustness,
        occlusion_worst_case,
        spatial_worst_case,
        verify_manipulation,
        worst_of_k,
    )
    from vulnscope.rbm import DeepRBM, train_layerwise_kl  # noqa: F401
    from vulnscope.rg import stability_matrix  # noqa: F401


def test_every_attack_cites_its_paper():
    from vulnscope import attacks

    for name in attacks.__all__:
        cls = getattr(attacks, name)
        if inspect.isclass(cls) and issubclass(cls, attacks.Attack) and cls is not attacks.Attack:
            assert any(str(year) in cls.__doc__ for year in range(2013, 2026)), name


def test_every_defence_cites_its_paper_and_says_whether_it_keeps_the_class():
    from vulnscope import cloning

    for name in cloning.__all__:
        cls = getattr(cloning, name)
        if inspect.isclass(cls) and issubclass(cls, cloning.OutputDefence):
            if cls in (cloning.OutputDefence, cloning.Undefended):
                continue
            assert any(str(year) in cls.__doc__ for year in range(2013, 2026)), name
            assert isinstance(cls.preserves_argmax, bool), name
