"""The paper's studies as plain data: variants, the paper's numbers and its claims.

Three studies (paper section 4.5): ``ablation`` (Table 2), ``experts`` (Fig. 7) and
``alpha`` (Fig. 8). A variant is a name plus config overrides applied to the study's
base config; everything else (recipe, data, seed, budget) is the same for every variant
of a study, so differences come from the variant alone.

The paper gives Table 2 as numbers; Fig. 7 and Fig. 8 only as plots, whose text states
how many of the 8 metrics the chosen setting wins against each other one. Both kinds
of statement become :class:`Claim` objects that the report checks against the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The eight metrics of the paper's tables, in its column order (all higher-is-better).
PAPER_METRICS: tuple[str, ...] = ("EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf")


@dataclass(frozen=True)
class Variant:
    """One setting of a study.

    Attributes:
        name: short name used in tables and folder names (``E4K2``, ``w/o MoLE``).
        overrides: ``KEY=VALUE`` config overrides on top of the study's base config.
        x: position on the study's plot axis (alpha value), or None.
    """

    name: str
    overrides: tuple[str, ...]
    x: float | None = None

    @property
    def slug(self) -> str:
        """The name as a folder name (``w/o MoLE`` -> ``wo-MoLE``)."""
        return self.name.replace("w/o ", "wo-").replace("/", "-").replace(" ", "-")


@dataclass(frozen=True)
class Claim:
    """A paper statement of the form "``better`` beats ``worse`` on ``paper_count`` of 8".

    Attributes:
        better, worse: variant names.
        paper_count: metrics (of 8) on which the paper reports ``better`` ahead; one count
            per dataset when the paper gives a table (Table 2: M3FD, FLIR, LLVIP).
        source: where the paper says it.
    """

    better: str
    worse: str
    paper_count: tuple[int, ...]
    source: str


@dataclass(frozen=True)
class Study:
    """A study: its variants, the variant the paper chose, its claims and its numbers.

    Attributes:
        name: ``ablation``, ``experts`` or ``alpha``.
        title: what the paper calls it.
        variants: the settings, in the paper's order.
        reference: the paper's chosen setting (the full model, E4K2, alpha 10).
        claims: statements checked against the measured table.
        paper_table: {dataset: {variant: {metric: value}}} where the paper prints numbers.
        plot: ``None``, ``"bars"`` (one group of bars per metric, Fig. 7) or ``"lines"``
            (each metric against :attr:`Variant.x`, Fig. 8).
        x_label: the plot's x axis for ``"lines"``.
    """

    name: str
    title: str
    variants: tuple[Variant, ...]
    reference: str
    claims: tuple[Claim, ...]
    paper_table: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    plot: str | None = None
    x_label: str = ""

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def _row(values: str) -> dict[str, float]:
    return dict(zip(PAPER_METRICS, (float(v) for v in values.split()), strict=True))


#: Table 2 of the paper, as printed.
TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "M3FD": {
        "w/o MoLE": _row("6.7856 0.0692 9.1636 2.7214 0.8100 5.5509 1.5153 0.6535"),
        "w/o MoGE": _row("6.8351 0.0695 9.2491 2.8138 0.8261 5.6521 1.5346 0.6375"),
        "Att-Local": _row("6.8656 0.0693 9.1894 2.7320 0.8271 5.5809 1.5190 0.6390"),
        "full": _row("7.0018 0.0715 10.1406 4.1949 1.0034 5.6742 1.5433 0.6661"),
    },
    "FLIR": {
        "w/o MoLE": _row("6.9021 0.0587 10.2859 2.3666 0.5371 5.6961 1.0976 0.3187"),
        "w/o MoGE": _row("7.3172 0.0548 10.6654 2.9208 0.7747 5.2525 1.6629 0.4796"),
        "Att-Local": _row("7.3070 0.0602 10.6403 2.6673 0.7448 5.7265 1.4788 0.4838"),
        "full": _row("7.4925 0.0603 10.7007 3.1209 0.8212 5.7604 1.6818 0.4991"),
    },
    "LLVIP": {
        "w/o MoLE": _row("6.9077 0.0661 9.8090 2.5039 0.5812 4.9358 1.1739 0.4732"),
        "w/o MoGE": _row("7.2740 0.0847 9.6034 2.7067 0.7621 5.5960 1.6260 0.5110"),
        "Att-Local": _row("7.2528 0.0858 9.5483 2.7129 0.8599 6.1099 1.6393 0.5735"),
        "full": _row("7.3523 0.0862 9.8664 3.1061 0.9202 6.1316 1.7841 0.5932"),
    },
}


def wins_in_table(table: dict[str, dict[str, float]], better: str, worse: str) -> int:
    """Metrics (of :data:`PAPER_METRICS`) on which ``better`` is strictly above ``worse``."""
    return sum(table[better][m] > table[worse][m] for m in PAPER_METRICS)


def _table2_claim(better: str, worse: str) -> Claim:
    counts = tuple(wins_in_table(TABLE2[d], better, worse) for d in TABLE2)
    return Claim(better, worse, counts, "Table 2 (M3FD, FLIR, LLVIP)")


ABLATION = Study(
    name="ablation",
    title="Ablation (paper Table 2)",
    variants=(
        Variant("full", ("model.variant=full",)),
        Variant("w/o MoLE", ("model.variant=no_mole",)),
        Variant("w/o MoGE", ("model.variant=no_moge",)),
        Variant("Att-Local", ("model.variant=att_local",)),
    ),
    reference="full",
    claims=(
        _table2_claim("full", "w/o MoLE"),
        _table2_claim("full", "w/o MoGE"),
        _table2_claim("full", "Att-Local"),
        _table2_claim("Att-Local", "w/o MoLE"),
    ),
    paper_table=TABLE2,
)


def _experts(n: int, k: int) -> Variant:
    return Variant(f"E{n}K{k}", (f"model.num_experts={n}", f"model.top_k={k}"))


EXPERTS = Study(
    name="experts",
    title="Number of experts and top-K (paper Fig. 7)",
    variants=tuple(
        _experts(n, k) for n, k in ((2, 2), (4, 2), (6, 2), (8, 2), (4, 1), (4, 3), (4, 4))
    ),
    reference="E4K2",
    # section 4.6: "E4K2 was higher than E2K2 in 7 metrics, E6K2 in 6 metrics, and E8K2
    # in 5 metrics ... E4K2 can outperform E4K1 and E4K3 in 7 metrics and E4K4 in all"
    claims=tuple(
        Claim("E4K2", worse, (count,), "Section 4.6, Fig. 7 (FLIR)")
        for worse, count in (
            ("E2K2", 7),
            ("E6K2", 6),
            ("E8K2", 5),
            ("E4K1", 7),
            ("E4K3", 7),
            ("E4K4", 8),
        )
    ),
    plot="bars",
)

ALPHA = Study(
    name="alpha",
    title="Gradient-loss weight alpha (paper Fig. 8)",
    variants=tuple(
        Variant(f"alpha {a:g}", (f"optim.alpha={a}",), x=a) for a in (1.0, 5.0, 10.0, 20.0, 40.0)
    ),
    reference="alpha 10",
    # section 4.6: below 10 "fail to exceed the performance on all metrics with alpha
    # equal to 10"; above 10 "an improvement in only 2 metrics (SF and AG)"
    claims=tuple(
        Claim("alpha 10", worse, (count,), "Section 4.6, Fig. 8 (FLIR)")
        for worse, count in (("alpha 1", 8), ("alpha 5", 8), ("alpha 20", 6), ("alpha 40", 6))
    ),
    plot="lines",
    x_label="alpha (weight of the gradient loss)",
)

#: Every study by name.
STUDIES: dict[str, Study] = {s.name: s for s in (ABLATION, EXPERTS, ALPHA)}
