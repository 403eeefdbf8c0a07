"""The model sweep: Gaussian HMMs for n = 1..max_states, several restarts each.

docs/method.md section 2, steps 4-7. Every (n, restart) fit is independent, so the
sweep runs them in parallel through joblib (local processes by default, or a
dask.distributed cluster). With the default "numpy" engine (diagonal
covariances) the restarts of one n are one joblib task: their EM iterations run
side by side in one vectorised pass (analysis.fastem), each restart still
following its own path exactly as a separate hmmlearn fit would; with
``engine="hmmlearn"`` (and always for full covariances) every (n, restart) is
its own task. The task itself, the fitting and scoring of one n, is
:func:`analysis.fitting.fit_restarts`. A fit that fails (degenerate covariance,
too few points) is recorded as a failure in the sweep table and never stops the
sweep.

The estimator :class:`StateSelector` follows scikit-learn conventions (see
its developer guide): ``__init__`` only stores parameters, ``fit`` validates,
runs the sweep and returns ``self``; learned attributes end in ``_``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from trainmap.analysis.fitting import autocorr_time, batchable, fit_restarts, initial_params
from trainmap.analysis.settings import COVARIANCE_TYPES, DEFAULT_CRITERION, MAX_STATES_CAP

# "bic_best" etc. name a column of the sweep table and whether lower is better.
CRITERIA = {
    "bic_mean": ("bic_mean", "min"),  # the paper: held-out BIC averaged over restarts
    "bic_best": ("bic_best", "min"),  # BIC of the best restart (the ML fit)
    "aic_best": ("aic_best", "min"),
    "heldout_ll": ("heldout_ll_best", "max"),
    "icl": ("icl_best", "min"),
    # The same two counting effective rather than all held-out checkpoints
    # (autocorrelated metrics; see effective_criteria and docs/selection.md).
    "bic_ess": ("bic_ess", "min"),
    "icl_ess": ("icl_ess", "min"),
    # icl on short runs, icl_ess on long ones (see LONG_RUN_CHECKPOINTS)
    "auto": ("icl_auto", "min"),
}
# Runs at least this long (checkpoints per scored run) are selected with the
# effective-sample penalty by "auto". Measured (docs/selection.md): plain ICL
# over-selects from about 300 checkpoints on (53/72 right at 300-3000, against
# 62/72 for icl_ess), while icl_ess under-selects shorter runs (30/45 right at
# 100-250 checkpoints, against 41/45 for plain ICL): it merges small states such
# as a detour branch's.
LONG_RUN_CHECKPOINTS = 300

SWEEP_COLUMNS = [
    "n",
    "feasible",
    "failures",
    "converged",
    "n_iter_mean",
    "train_ll",
    "heldout_ll_mean",
    "heldout_ll_std",
    "heldout_ll_best",
    "aic_mean",
    "aic_std",
    "aic_best",
    "bic_mean",
    "bic_std",
    "bic_best",
    "icl_best",
    "heldout_rows",  # checkpoints the criteria are computed on
    "entropy_best",  # entropy of the posterior state assignments (ICL's extra term)
    "lag1_best",  # lag-1 autocorrelation of the best restart's residuals
    "autocorr_time",  # tau of the effective sample size, one value for the sweep
    "bic_ess",  # BIC and ICL counting effective rows (see effective_criteria)
    "icl_ess",
    "rows_per_run",  # scored checkpoints per scored run ("auto" switches on it)
    "icl_auto",  # the "auto" criterion: icl_best or icl_ess by rows_per_run
    "best_restart",
    "n_params",
    "seconds",
    "error",  # the first failure's message ("" if none)
]


def sweep_table(records: Sequence[dict], max_states: int) -> pd.DataFrame:
    """One row per n from the per-(n, restart) records (NaN where infeasible)."""
    rows = []
    for n in range(1, max_states + 1):
        mine = [r for r in records if r["n"] == n]
        good = [r for r in mine if r["ok"]]
        row = {c: np.nan for c in SWEEP_COLUMNS}
        row.update(n=n, feasible=bool(good), failures=len(mine) - len(good))
        row["n_params"] = mine[0]["n_params"] if mine else np.nan
        row["seconds"] = float(sum(r["seconds"] for r in mine))
        row["error"] = next((r["error"] for r in mine if r["error"]), "")
        if good:
            best = max(good, key=lambda r: r["heldout_ll"])  # best restart, method.md §2.5
            for key in ("heldout_ll", "aic", "bic"):
                values = np.array([r[key] for r in good])
                row[f"{key}_mean"] = float(values.mean())
                row[f"{key}_std"] = float(values.std())
                row[f"{key}_best"] = float(best[key])
            row.update(
                converged=int(sum(r["converged"] for r in good)),
                n_iter_mean=float(np.mean([r["n_iter"] for r in good])),
                train_ll=float(best["train_ll"]),
                icl_best=float(best["icl"]),
                heldout_rows=int(best["heldout_rows"]),
                rows_per_run=float(best["heldout_rows"]) / max(int(best["heldout_runs"]), 1),
                entropy_best=float(best["entropy"]),
                lag1_best=float(best["lag1"]),
                best_restart=int(best["restart"]),
            )
        rows.append(row)
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    table["n"] = table["n"].astype(int)
    table["feasible"] = table["feasible"].astype(bool)
    table["failures"] = table["failures"].astype(int)
    return effective_criteria(table)


def effective_criteria(table: pd.DataFrame) -> pd.DataFrame:
    """Fill ``autocorr_time``, ``bic_ess`` and ``icl_ess`` of a sweep table (in place, returned).

    Consecutive checkpoints of a training run are not independent: the metrics
    wander (autocorrelated noise, drift, per-run offsets). Plain BIC and ICL
    count every checkpoint as an independent observation, so on long runs the
    likelihood an extra state gains from modelling that wandering grows with
    the number of checkpoints T while the penalty grows with ln T only, and n
    is over-selected. With tau the integrated autocorrelation time of the
    residuals x_t - E[mu_{s_t} | x] (from their lag-1 autocorrelation, AR(1)):

        BIC_ess = -2 LL + sqrt(tau) * p * ln(T / tau)
        ICL_ess = BIC_ess + 2 * entropy

    T / tau is the effective number of held-out checkpoints (BIC's log term
    counts independent observations). The factor sqrt(tau): the criteria
    compare models on held-out runs, and the chance fluctuation of a held-out
    log-likelihood difference, a sum of T autocorrelated terms, has a standard
    deviation sqrt(tau) times that of T independent ones; the penalty that
    guards against chance improvements grows by the same factor. Scaling the
    likelihood by 1 / tau instead (penalty x tau) was measured too and
    under-selects short runs (docs/selection.md).

    One tau serves every n, so the criteria stay comparable across n: the
    smallest over the feasible n, i.e. the residual persistence of the most
    flexible fit (a model with too few states leaves a state's mean shift in
    its residuals and would overstate tau). A table without the residual
    column (a fit saved before this existed) gets NaN, i.e. no ESS criteria.
    """
    have = "lag1_best" in table and table["feasible"].any() and table["lag1_best"].notna().any()
    for column in ("autocorr_time", "bic_ess", "icl_ess", "icl_auto"):
        table[column] = np.nan
    if not have:
        if "icl_best" in table:
            table["icl_auto"] = table["icl_best"]
        return table
    tau = min(autocorr_time(rho) for rho in table.loc[table["feasible"], "lag1_best"].dropna())
    # At least 2 effective rows, so the log term stays a penalty.
    t_eff = np.maximum(table["heldout_rows"].astype(float) / tau, 2.0)
    bic = -2 * table["heldout_ll_best"] + math.sqrt(tau) * table["n_params"] * np.log(t_eff)
    table["autocorr_time"] = tau
    table["bic_ess"] = bic
    table["icl_ess"] = bic + 2 * table["entropy_best"]
    table["icl_auto"] = table["icl_ess"] if long_runs(table) else table["icl_best"]
    return table


def long_runs(table: pd.DataFrame) -> bool:
    """True when the scored runs are long enough for "auto" to use the ESS penalty."""
    if "rows_per_run" not in table or not table["rows_per_run"].notna().any():
        return False
    return float(table["rows_per_run"].dropna().iloc[0]) >= LONG_RUN_CHECKPOINTS


def select_n(table: pd.DataFrame, criterion: str = DEFAULT_CRITERION) -> int:
    """The n the criterion picks among feasible rows of a sweep table."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    column, direction = CRITERIA[criterion]
    if column not in table:
        raise ValueError(
            f"criterion {criterion!r} needs column {column!r}, which this sweep table lacks "
            "(a fit saved by an older trainmap: refit, or choose another criterion)"
        )
    feasible = table[table["feasible"] & table[column].notna()]
    if feasible.empty:
        raise ValueError("no feasible number of states in the sweep")
    values = feasible[column].to_numpy()
    # Ties go to the smaller n (rows are in increasing n).
    pick = int(np.argmin(values)) if direction == "min" else int(np.argmax(values))
    return int(feasible["n"].iloc[pick])


def run_sweep(
    X: np.ndarray,
    lengths: Sequence[int],
    X_held: np.ndarray,
    lengths_held: Sequence[int],
    *,
    max_states: int = 8,
    restarts: int = 5,
    covariance_type: str = "diag",
    n_iter: int = 100,
    tol: float | None = None,
    seed: int = 0,
    kmeans_n_init: int = 1,
    engine: str = "numpy",
    workers: int = 2,
    backend: str = "loky",
    scheduler: str | None = None,
    progress: Callable[[float], None] | None = None,
    progress_bar: bool | None = None,
    states: Sequence[int] | None = None,
) -> list[dict]:
    """Fit every (n, restart) in parallel; return the records of :func:`fit_restarts`.

    ``backend`` is a joblib backend ("loky" local processes, "threading",
    "sequential") or "dask", which connects to the dask.distributed scheduler at
    ``scheduler`` (e.g. "tcp://127.0.0.1:8786"). ``progress(fraction of fits
    done)`` is called after every finished task (one n with the numpy engine,
    one fit otherwise); ``progress_bar`` shows a tqdm bar (None: only on a
    terminal). ``states`` restricts the sweep to some n (default 1..max_states).
    """
    import joblib
    from tqdm.auto import tqdm

    states = list(states) if states is not None else list(range(1, max_states + 1))
    kwargs = dict(
        covariance_type=covariance_type,
        n_iter=n_iter,
        tol=tol,
        seed=seed,
        kmeans_n_init=kmeans_n_init,
        engine=engine,
    )
    # The numpy engine fits all restarts of one n together (one task per n);
    # hmmlearn fits are one task per (n, restart). Largest n first: they take
    # longest, so the pool stays busy to the end.
    per_task = restarts if engine == "numpy" and covariance_type == "diag" else 1
    tasks = [
        (n, list(range(r, min(r + per_task, restarts))))
        for n in sorted(states, reverse=True)
        for r in range(0, restarts, per_task)
    ]
    total = len(states) * restarts
    job = joblib.delayed(fit_restarts)

    def call(n, rs):
        # On local workers each n's k-means starts are made here, as joblib
        # hands its task out: a worker then imports numpy only and starts in
        # ~0.2 s instead of ~1 s with scikit-learn (analysis.fitting). On a
        # cluster the workers make them, beside the data.
        starts = None
        if backend != "dask" and batchable(engine, covariance_type, n, len(rs), lengths):
            try:
                starts = initial_params(X, n, rs, seed, kmeans_n_init)
            except Exception:  # the worker tries again and records the error
                starts = None
        return job(X, lengths, X_held, lengths_held, n, rs, starts=starts, **kwargs)

    calls = (call(n, rs) for n, rs in tasks)

    client = None
    if backend == "dask":
        if not scheduler:
            raise ValueError("backend 'dask' needs a scheduler address (e.g. tcp://host:8786)")
        from dask.distributed import Client

        client = Client(scheduler)
        context = joblib.parallel_config(backend="dask")
    else:
        context = joblib.parallel_config(backend=backend)
    records = []
    if progress_bar is None:  # a bar only where someone watches (a terminal)
        progress_bar = sys.stderr.isatty()
    bar = tqdm(total=total, desc="HMM sweep", unit="fit", disable=not progress_bar)
    try:
        with context:
            parallel = joblib.Parallel(n_jobs=workers, return_as="generator_unordered")
            for done in parallel(calls):
                records.extend(done)
                bar.update(len(done))
                if progress is not None:
                    progress(len(records) / total)
    finally:
        bar.close()
        if client is not None:
            client.close()
    records.sort(key=lambda r: (r["n"], r["restart"]))
    return records


class StateSelector(BaseEstimator):
    """Fit Gaussian HMMs for n = 1..max_states and pick n by a criterion.

    Parameters
    ----------
    max_states : largest number of states tried.
    restarts : random restarts per n (different ``random_state``).
    covariance_type : "diag" or "full".
    criterion : one of :data:`CRITERIA` (default :data:`DEFAULT_CRITERION`).
    n_states : use this n instead of the criterion's choice.
    n_iter, tol : EM iterations and convergence tolerance per fit; ``tol=None``
        stops when an iteration gains less than 1e-4 nats per train checkpoint.
    kmeans_n_init : k-means runs in the initialisation (hmmlearn uses 10).
    engine : "numpy" (diag: restarts batched in analysis.fastem, the same EM as
        hmmlearn's) or "hmmlearn" (GaussianHMM.fit per restart; always for full).
    workers, backend, scheduler : parallelism (see :func:`run_sweep`).
    random_state : seed of the restarts.
    extend_to : when the criterion picks ``max_states`` itself, fit
        ``max_states + 1``, ``+ 2``, ... one at a time until the criterion turns
        up (picks a smaller n than the largest tried), that n is infeasible, or
        ``extend_to`` states are reached. None (default): try 1..max_states only.

    ``fit(X, lengths, X_heldout, lengths_heldout)`` takes the train runs and the
    held-out runs (each as stacked rows plus per-run lengths) and sets
    ``records_`` (every fit), ``sweep_`` (the table), ``n_components_`` (the
    selected n), ``models_`` (best restart's parameters per feasible n) and
    ``max_states_tried_`` (the largest n fitted, above ``max_states`` if extended).
    """

    def __init__(
        self,
        max_states=8,
        restarts=5,
        covariance_type="diag",
        criterion=DEFAULT_CRITERION,
        n_states=None,
        n_iter=100,
        tol=None,
        kmeans_n_init=1,
        engine="numpy",
        workers=2,
        backend="loky",
        scheduler=None,
        random_state=0,
        progress=None,
        extend_to=None,
    ):
        self.max_states = max_states
        self.restarts = restarts
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.n_states = n_states
        self.n_iter = n_iter
        self.tol = tol
        self.kmeans_n_init = kmeans_n_init
        self.engine = engine
        self.workers = workers
        self.backend = backend
        self.scheduler = scheduler
        self.random_state = random_state
        self.progress = progress
        self.extend_to = extend_to

    def fit(self, X, lengths, X_heldout=None, lengths_heldout=None):
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise ValueError("X must be a finite 2-D array (rows = checkpoints)")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}")
        if int(self.max_states) < 1 or int(self.restarts) < 1:
            raise ValueError("max_states and restarts must be at least 1")
        if self.n_states is not None and not 1 <= int(self.n_states) <= int(self.max_states):
            raise ValueError(f"n_states must be in 1..max_states={self.max_states}")
        if X_heldout is None:
            X_heldout, lengths_heldout = np.empty((0, X.shape[1])), []
        data = (X, list(lengths), np.asarray(X_heldout, dtype=float), list(lengths_heldout))
        options = dict(
            restarts=int(self.restarts),
            covariance_type=self.covariance_type,
            n_iter=self.n_iter,
            tol=self.tol,
            seed=self.random_state,
            kmeans_n_init=self.kmeans_n_init,
            engine=self.engine,
            workers=self.workers,
            backend=self.backend,
            scheduler=self.scheduler,
        )
        tried = int(self.max_states)
        self.records_ = run_sweep(*data, max_states=tried, progress=self.progress, **options)
        self.sweep_ = sweep_table(self.records_, tried)
        cap = max(int(self.extend_to or 0), tried)
        # The ceiling guardrail: a criterion still falling at the largest n
        # tried says nothing about where it would turn up.
        while (
            self.n_states is None
            and tried < cap
            and self.sweep_["feasible"].iloc[-1]
            and select_n(self.sweep_, self.criterion) == tried
        ):
            tried += 1
            # The progress callback has reported 1.0 already; extensions are quiet.
            self.records_ += run_sweep(*data, states=[tried], progress_bar=False, **options)
            self.sweep_ = sweep_table(self.records_, tried)
        self.max_states_tried_ = tried
        self.models_ = best_models(self.records_, self.sweep_)
        if not self.models_:
            first = next((r["error"] for r in self.records_ if r["error"]), "?")
            raise ValueError(
                "every fit failed (too few checkpoints for this many features and "
                f"states, or degenerate data); first error: {first}"
            )
        if self.n_states is not None:
            self.n_components_ = int(self.n_states)
        else:
            self.n_components_ = select_n(self.sweep_, self.criterion)
        return self


def best_models(records: Sequence[dict], table: pd.DataFrame) -> dict[int, dict]:
    """The best restart's arrays for every feasible n."""
    out = {}
    for row in table.itertuples():
        if row.feasible:
            record = next(
                r for r in records if r["n"] == row.n and r["restart"] == row.best_restart
            )
            out[int(row.n)] = record["arrays"]
    return out


def describe_selection(
    table: pd.DataFrame,
    criterion: str,
    selected: int,
    *,
    max_states: int,
    cap: int = MAX_STATES_CAP,
    given: bool = False,
    heldout_runs: int | None = None,
    n_runs: int | None = None,
    runs_needed: int | None = None,
) -> dict:
    """How n was selected, in plain words and numbers (``FitResult.selection``).

    Keys: criterion, max_states_tried, extended, at_ceiling, penalty ("ess" or
    "plain"), effective_rows and autocorr_time (None for a plain penalty),
    message; and notes (the message's sentences after the first), warning (the
    ceiling sentence, "" if none), max_states (requested), cap, heldout_runs.
    ``at_ceiling`` is True when the criterion's n is the largest feasible n:
    the criterion never turned up, so the true n may be larger.
    """
    feasible = table.loc[table["feasible"], "n"]
    tried = int(table["n"].max())
    largest = int(feasible.max()) if len(feasible) else 0
    uses_ess = criterion.endswith("_ess") or (criterion == "auto" and long_runs(table))
    penalty = "ess" if uses_ess else "plain"
    tau = rows = None
    if penalty == "ess" and "autocorr_time" in table and table["autocorr_time"].notna().any():
        tau = float(table["autocorr_time"].dropna().iloc[0])
        rows = float(table.loc[table["feasible"], "heldout_rows"].iloc[0]) / tau
    pick = selected if not given else select_n(table, criterion)
    at_ceiling = not given and pick == largest
    cap = max(int(cap), int(max_states))
    notes = []  # plain sentences, each shown on its own line by the CLI
    if criterion == "auto" and "rows_per_run" in table and table["rows_per_run"].notna().any():
        per_run = float(table["rows_per_run"].dropna().iloc[0])
        notes.append(
            f"runs of {per_run:.0f} checkpoints: "
            + (
                "ICL with the effective-sample penalty (long runs)"
                if uses_ess
                else f"plain ICL (the effective-sample penalty applies from "
                f"{LONG_RUN_CHECKPOINTS} checkpoints per run)"
            )
        )
    if given and pick != selected:
        notes.append(f"{criterion} would pick {pick}")
    if tau is not None:
        notes.append(
            f"the penalty counts {rows:.0f} effective of {rows * tau:.0f} scored "
            f"checkpoints (autocorrelation time {tau:.1f})"
        )
    extended = tried > int(max_states)
    if extended:
        notes.append(
            f"the criterion was still falling at n = {max_states}, so the sweep went on "
            f"to n = {tried}"
        )
    warning = ""
    if at_ceiling:
        if largest < tried:
            warning = (
                f"n = {pick} is the largest feasible n (more states have too many parameters "
                "for these checkpoints): the true n may be larger"
            )
        elif tried >= cap:
            warning = f"n = {pick} is the largest tried (cap {cap}): the true n may be larger"
        else:
            warning = (
                f"n = {pick} is the largest tried: the true n may be larger "
                f"(refit with max_states up to {cap})"
            )
        notes.append(warning)
    if heldout_runs == 0:
        why = (
            f"{n_runs} runs, a held-out set needs at least {runs_needed}"
            if runs_needed
            else "none requested"
        )
        notes.append(
            f"no held-out runs ({why}): the criteria are computed on the training runs "
            "themselves (in-sample)"
        )
        if criterion == "heldout_ll":
            notes.append("in-sample log-likelihood only grows with n: it selects nothing")
    head = f"selected n = {selected} " + ("(given)" if given else f"by {criterion}")
    return {
        "criterion": criterion,
        "max_states_tried": tried,
        "extended": extended,
        "at_ceiling": bool(at_ceiling),
        "penalty": penalty,
        "effective_rows": rows,
        "autocorr_time": tau,
        "message": "; ".join([head, *notes]),
        "notes": notes,
        "warning": warning,
        "max_states": int(max_states),
        "cap": cap,
        "heldout_runs": heldout_runs,
    }
