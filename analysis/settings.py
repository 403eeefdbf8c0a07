"""The settings of a fit, typed once: ``trainmap fit``, the API, the store key and "Fit now".

:class:`FitSettings` is a frozen dataclass. Like a scikit-learn estimator's
``__init__`` it only stores values; :meth:`FitSettings.validate` (called by
``analysis.api.fit_experiment`` before anything is read) is the one place they
are checked. The CLI takes its defaults and choices from here, the store keys a
saved fit by :meth:`FitSettings.key_params`, and the dashboard's "Fit now"
shows the same fit as a command with :meth:`FitSettings.cli_options`.

Import-cheap (no numpy): ``trainmap --help`` builds its parser from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

COVARIANCE_TYPES = ("diag", "full")
# How n is selected; analysis.model.CRITERIA maps each to its sweep column.
CRITERIA_NAMES = (
    "auto",
    "icl_ess",
    "bic_ess",
    "icl",
    "bic_best",
    "bic_mean",
    "aic_best",
    "heldout_ll",
)
# Chosen by the selection studies in docs/selection.md.
DEFAULT_CRITERION = "auto"
NORMALIZATIONS = ("per_run", "pooled")
# Chosen by the selection study in docs/selection.md.
DEFAULT_NORMALIZE = "pooled"
# When the criterion picks the largest n tried, the sweep goes on one n at a
# time up to this many states (docs/selection.md, "Ceiling").
MAX_STATES_CAP = 12
DEFAULT_RESAMPLES = 50  # bootstrap resamples (analysis.bootstrap)
BACKENDS = ("loky", "dask", "threading", "sequential")
SEED_LIMIT = 2**32  # the generators' range (numpy, scikit-learn)


@dataclass(frozen=True)
class FitSettings:
    """Everything a fit of an experiment is asked for (see ``fit_experiment`` for each).

    The fields in :meth:`key_params` change the fitted models or maps and so key
    the saved fit; ``criterion`` and ``n_states`` only choose among saved maps,
    ``bootstrap`` is saved beside them, and ``workers``, ``backend`` and
    ``scheduler`` only say where the work runs.
    """

    features: tuple[str, ...] | None = None
    max_states: int = 8
    max_states_cap: int = MAX_STATES_CAP
    restarts: int = 5
    cov: str = "diag"
    criterion: str = DEFAULT_CRITERION
    normalize: str = DEFAULT_NORMALIZE
    n_states: int | None = None
    seed: int = 0
    first_n: int | None = None
    heldout: float = 0.2
    n_iter: int = 100
    tol: float | None = None
    threshold: float = 0.9
    bootstrap: int = DEFAULT_RESAMPLES
    workers: int = 2
    backend: str = "loky"
    scheduler: str | None = None

    def replace(self, **changes) -> FitSettings:
        if changes.get("features") is not None:
            changes["features"] = tuple(changes["features"])
        return dataclasses.replace(self, **changes)

    def validate(self) -> FitSettings:
        """Raise ValueError with a message a user can act on; return self."""
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.cov not in COVARIANCE_TYPES:
            raise ValueError(f"cov must be one of {COVARIANCE_TYPES}, got {self.cov!r}")
        if self.criterion not in CRITERIA_NAMES:
            raise ValueError(
                f"criterion must be one of {sorted(CRITERIA_NAMES)}, got {self.criterion!r}"
            )
        if self.max_states < 1 or self.restarts < 1:
            raise ValueError("max_states and restarts must be at least 1")
        # A sweep extended past max_states (the ceiling guardrail) has maps up to the cap.
        most = max(self.max_states, self.max_states_cap)
        if self.n_states is not None and not 1 <= int(self.n_states) <= most:
            raise ValueError(f"n_states must be between 1 and {most} (max_states or its cap)")
        if not 0 <= self.heldout < 1:
            raise ValueError("heldout must be in [0, 1)")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be in 0..{SEED_LIMIT - 1}, got {self.seed}")
        if not 0 <= self.threshold <= 1:  # also refuses nan
            raise ValueError(f"threshold is an eval_acc between 0 and 1, got {self.threshold}")
        if int(self.bootstrap) < 0:
            raise ValueError(
                f"bootstrap must be 0 (off) or a number of resamples, got {self.bootstrap}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "dask" and not self.scheduler:
            raise ValueError("backend 'dask' needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
        if int(self.workers) == 0:
            raise ValueError("workers must be non-zero (-1 means all cores)")
        return self

    def key_params(self) -> dict:
        """The parameters that change the fitted models or maps, as the store keys them."""
        return {
            "max_states_cap": int(self.max_states_cap),
            "features": None if self.features is None else list(self.features),
            "first_n": self.first_n,
            "normalize": self.normalize,
            "cov": self.cov,
            "max_states": int(self.max_states),
            "restarts": int(self.restarts),
            "seed": int(self.seed),
            "heldout": float(self.heldout),
            "n_iter": int(self.n_iter),
            "tol": None if self.tol is None else float(self.tol),
            "threshold": float(self.threshold),
        }

    def cli_options(self) -> str:
        """The ``trainmap fit`` options that give these settings (only those not default)."""
        default = FitSettings()
        options = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == getattr(default, field.name):
                continue
            if isinstance(value, Sequence) and not isinstance(value, str):
                value = ",".join(value)
            options.append(f"--{field.name.replace('_', '-')} {value}")
        return " ".join(options)


def settings_from(
    settings: FitSettings | None, params: dict, *, ignore_unknown: bool = False
) -> FitSettings:
    """``settings`` (default ``FitSettings()``) with ``params`` (keyword arguments) applied.

    An unknown name is a TypeError unless ``ignore_unknown`` (a saved fit's
    params, which hold more than settings, e.g. from an older trainmap).
    """
    if ignore_unknown:
        names = {f.name for f in dataclasses.fields(FitSettings)}
        params = {k: v for k, v in params.items() if k in names}
    return (settings or FitSettings()).replace(**params)
