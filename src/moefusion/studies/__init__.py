"""The paper's experiments as code: ablations (Table 2), experts and top-K (Fig. 7),
alpha (Fig. 8); see ``docs/studies.md``.

:mod:`~moefusion.studies.definitions` holds the studies as data,
:mod:`~moefusion.studies.runner` trains and evaluates their variants,
:mod:`~moefusion.studies.report` writes tables, figures and verdicts on the paper's claims.
"""

from moefusion.studies.definitions import PAPER_METRICS, STUDIES, Claim, Study, Variant
from moefusion.studies.runner import Budget, RunResult, StudySettings, run_study, run_variant

__all__ = [
    "PAPER_METRICS",
    "STUDIES",
    "Budget",
    "Claim",
    "RunResult",
    "Study",
    "StudySettings",
    "Variant",
    "run_study",
    "run_variant",
]
