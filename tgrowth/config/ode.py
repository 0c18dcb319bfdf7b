"""Config schema of `tgrowth fit-ode` (owned by the ODE work; the `fit` section is reused by predict)."""

from dataclasses import dataclass

from tgrowth.config.base import RunConfig, WandbConfig, doc


@dataclass
class OdeDataConfig:
    """Where the sizes come from."""

    areas_csv: str = doc("???", "CSV with columns subject, day, size, rt_start_day, rt_end_day (rt_* empty: no RT).")


@dataclass
class FitSettings:
    """The growth-ODE fit (also `predict`'s `ode` section)."""

    model: str = doc("exponential_rt", "Growth model: exponential_rt (the authors' RT model), exponential, logistic[_rt], gompertz[_rt], linear_radial[_rt], or auto (rolling-origin CV per subject, AIC fallback).")
    candidates: list[str] = doc([], "Models auto chooses from (empty: every registered model).")
    compare_models: bool = doc(False, "Also fit every candidate once (no bootstrap) for the AIC/BIC model-comparison report (model_comparison.csv; the fit-ode YAMLs turn it on).")
    size_kind: str = doc("area", "What size measures: area (mm^2 or pixels) or volume (mm^3 or voxels); sets the linear-radial exponent (2 or 3).")
    rt_duration_days: float = doc(42.0, "RT length used when only one of rt_start_day / rt_end_day is given.")
    holdout_last: int = doc(0, "0: 'all' mode, fit every point. k > 0: fit all but the last k points of each subject and forecast them.")
    n_bootstrap: int = doc(100, "Bootstrap replicates (multiplicative Gaussian noise on the measurements, refit each).")
    noise: float = doc(0.1, "Bootstrap noise level (relative SD); bounds are widened by (1 + noise) as the authors do.")
    noise_clip: float = doc(2.0, "Clip the bootstrap noise factor to 1 +- noise_clip * noise.")
    n_starts: int = doc(16, "Optimisation starts of each point fit (the unperturbed data; also CV folds and model comparison): the authors' starting values plus jittered ones.")
    boot_starts: int = doc(4, "Optimisation starts of each bootstrap replicate: the authors' starting values plus jittered ones (as the authors, each replicate is refitted from the starting values).")
    start_jitter: float = doc(1.0, "SD of the jitter of extra starts, in the unconstrained (logit) parameter space.")
    optimizer: str = doc("lm", "lm: batched Levenberg-Marquardt (Jacobian by forward differences, one batched model call); adam: gradient descent, backpropagating through the model or the odeint solver.")
    steps: int = doc(-1, "Optimisation steps (-1: lm at most 300 Levenberg-Marquardt iterations per point fit and 100 per bootstrap replicate, each fit frozen once it has converged; adam 1000).")
    lr: float = doc(0.05, "Adam learning rate (unconstrained space), cosine-annealed to 1% over the steps.")
    integrator: str = doc("closed_form", "closed_form (exact, fast) or odeint (torchdiffeq, piecewise across RT; gradients through the solver).")
    ode_method: str = doc("dopri5", "torchdiffeq method when integrator=odeint.")
    ode_rtol: float = doc(1e-6, "odeint relative tolerance.")
    ode_atol: float = doc(1e-9, "odeint absolute tolerance.")
    population_prior: bool = doc(False, "Fit all subjects jointly with a learned log-normal prior over the parameters; subjects with 1 point get a prior-only forecast.")
    prior_mode: str = doc("hierarchical", "hierarchical: prior mean/SD learned jointly with the subjects; map: prior estimated from subjects with >= prior_min_points, then each subject's MAP fit.")
    prior_min_points: int = doc(5, "prior_mode=map: subjects with at least this many fitted points define the prior.")
    auto_pool: float = doc(3.0, "auto: weight (in folds) of the cohort's CV error of each model in a subject's CV score; 0: per subject only.")
    auto_horizon: int = doc(0, "auto: CV forecasts this many points ahead of each training window (0: holdout_last, at least 1).")
    auto_post_rt: int = doc(2, "auto: with RT inside the fitted span, CV training windows include at least this many post-RT points (0: off).")
    auto_min_train: int = doc(3, "auto: smallest number of points a CV fold trains on.")
    max_fold: float = doc(1.0e4, "Forecasts are clamped to [0, max_fold x first size] (extreme parameters never give inf).")
    accelerator: str = doc("auto", "Lightning accelerator for the fit: auto, cpu, gpu.")
    dtype: str = doc("float64", "Fit precision: float64 or float32.")
    progress_bar: bool = doc(True, "Show Lightning's progress bar during fits.")


@dataclass
class FitOdeConfig(RunConfig):
    """`tgrowth fit-ode`: fit a growth ODE per subject (batched bootstrap) and forecast."""

    data: OdeDataConfig = doc(OdeDataConfig(), "Input table.")
    fit: FitSettings = doc(FitSettings(), "The fit.")
    plots: bool = doc(True, "Write one PNG per subject and a cohort summary PNG.")
    plot_max_subjects: int = doc(200, "Write per-subject PNGs for at most this many subjects.")
    wandb: WandbConfig = doc(WandbConfig(), "Experiment tracking.")
