"""Parameters of the simulated cohort and the presets that set them.

The generative model itself is documented in ``docs/simulator.md``; this module
only holds the numbers. Every field has a realistic default; the presets
``demo`` and ``test`` trade resolution and run length for speed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from ..exceptions import UsageError

__all__ = ["PATIENT_SUBTYPES", "PRESETS", "SimulationParams", "parse_patient_subtypes",
           "resolve_params"]

#: Patient subtypes: which latent ages carry a patient's accelerated aging.
PATIENT_SUBTYPES = ("shared", "structural", "functional")


@dataclass(frozen=True)
class SimulationParams:
    """All parameters of the generative model (defaults: the realistic preset).

    Parameters
    ----------
    n_subjects : int
        Number of participants.
    seed : int
        Seed of every random draw; the same seed gives byte-identical files.
    age_min, age_max : float
        Ages are drawn uniformly in ``[age_min, age_max]`` (years).
    n_sites : int
        Number of acquisition sites (participants are spread evenly).
    patient_fraction : float
        Fraction of participants in the ``patient`` group.
    patient_gap : float
        True brain-age gap of patients, in years (added to both latent ages).
    patient_gap_struct, patient_gap_func : float or None
        Excess (years) added to the structural, resp. functional, latent age
        of patients whose subtype accelerates that modality; ``None`` uses
        ``patient_gap``.
    patient_subtypes : tuple of (str, float)
        Mix of patient subtypes, e.g. ``(("shared", 0.4), ("structural", 0.3),
        ("functional", 0.3))``: fractions of patients whose excess is in both
        latent ages (``shared``), only the structural one (``structural``) or
        only the functional one (``functional``). Empty: every patient is
        ``shared``.
    struct_loading, func_loading : float
        Loadings ``a_s`` and ``a_f`` of the Gaussianized age on the structural
        and functional latents (``s = a_s g + n_s``, ``f = a_f g + n_f``).
    noise_correlation : float
        Correlation ``rho`` of the two modality-specific noises ``n_s, n_f``;
        it controls the synergy atom.
    t1_voxel_size : float
        Voxel size of the native T1w image (mm, isotropic).
    t1_fov : tuple of float
        Field of view of the native T1w image (mm).
    bold_voxel_size : float
        Voxel size of the native BOLD image (mm, isotropic).
    bold_fov : tuple of float
        Field of view of the native BOLD image (mm).
    n_volumes : int
        Number of BOLD volumes.
    repetition_time : float
        BOLD repetition time (s).
    max_rotation_deg, max_translation_mm : float
        Head pose: uniform rotations in ``±max_rotation_deg`` about each axis
        and translations in ``±max_translation_mm``.
    head_scale_sd : float
        Standard deviation of the individual head-size factor (sex adds
        ``±head_scale_sex``).
    head_scale_sex : float
        Half the male-female difference of the head-size factor.
    deformation_sd_mm : float
        Amplitude of the individual smooth deformation (mm).
    deformation_spacing_mm : float
        Control-point spacing of the smooth deformation (mm).
    gm_loss_per_year : float
        Fraction of grey matter lost per year of structural age above
        ``age_reference`` with regional weight 1.
    regional_weights : tuple of (str, float)
        Multipliers of the grey-matter loss per region kind (frontal lobe,
        insula, hippocampus); other regions have weight 1.
    ventricle_growth_mm_per_year : float
        Outward growth of the lateral ventricles per year of structural age.
    age_reference : float
        Structural age (years) at which the template anatomy is unchanged.
    bias_field_strength : float
        Peak-to-centre amplitude of the multiplicative log bias field.
    t1_noise : tuple of float
        Rician noise level per site, as a fraction of white-matter intensity.
    site_gm_contrast : tuple of float
        Grey-matter intensity (relative to white matter) per site.
    bold_tsnr : float
        Temporal signal-to-noise ratio of grey matter (thermal noise).
    bold_signal_change : float
        Amplitude (fraction of baseline) of neural fluctuations at the
        reference age.
    dmn_coupling, dmn_coupling_loss : float
        Within default-mode coupling at ``age_reference`` and its loss over
        60 years of functional age.
    network_coupling, network_coupling_loss : float
        The same for the other networks.
    global_coupling, global_coupling_gain : float
        Between-network (global) coupling and its gain over 60 years
        (dedifferentiation).
    amplitude_loss : float
        Fractional loss of low-frequency amplitude over 60 years.
    motion_spikes : float
        Mean number of motion spikes per run (Poisson, at least one).
    motion_drift_mm : float
        Typical slow drift over the run (mm).
    atlas : str
        Atlas id (``brainage.atlases``) for the regional effects and the
        parcel time series truth.
    """

    n_subjects: int = 20
    seed: int = 0
    age_min: float = 20.0
    age_max: float = 80.0
    n_sites: int = 2
    patient_fraction: float = 0.3
    patient_gap: float = 5.0
    patient_gap_struct: float | None = None
    patient_gap_func: float | None = None
    patient_subtypes: tuple = ()
    struct_loading: float = 2.5
    func_loading: float = 1.0
    noise_correlation: float = -0.3
    t1_voxel_size: float = 1.0
    t1_fov: tuple = (192.0, 240.0, 224.0)
    bold_voxel_size: float = 3.0
    bold_fov: tuple = (192.0, 216.0, 144.0)
    n_volumes: int = 120
    repetition_time: float = 2.0
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 10.0
    head_scale_sd: float = 0.035
    head_scale_sex: float = 0.03
    deformation_sd_mm: float = 2.0
    deformation_spacing_mm: float = 16.0
    gm_loss_per_year: float = 0.0025
    regional_weights: tuple = (("frontal", 1.6), ("insula", 1.6), ("hippocampus", 2.0))
    ventricle_growth_mm_per_year: float = 0.06
    age_reference: float = 20.0
    bias_field_strength: float = 0.2
    t1_noise: tuple = (0.02, 0.035)
    site_gm_contrast: tuple = (0.62, 0.68)
    bold_tsnr: float = 80.0
    bold_signal_change: float = 0.01
    dmn_coupling: float = 0.75
    dmn_coupling_loss: float = 0.35
    network_coupling: float = 0.6
    network_coupling_loss: float = 0.1
    global_coupling: float = 0.2
    global_coupling_gain: float = 0.2
    amplitude_loss: float = 0.4
    motion_spikes: float = 2.0
    motion_drift_mm: float = 0.5
    atlas: str = "HarvardOxford"
    preset: str = field(default="default", compare=False)

    def validate(self) -> SimulationParams:
        """Check the values; return ``self``.

        Raises
        ------
        UsageError
            If a value is out of range, with the allowed range.
        """
        checks = [
            (self.n_subjects >= 1, f"n_subjects must be at least 1; got {self.n_subjects}"),
            (self.age_max > self.age_min, f"age_max ({self.age_max}) must exceed age_min "
             f"({self.age_min})"),
            (self.n_sites >= 1, f"n_sites must be at least 1; got {self.n_sites}"),
            (0.0 <= self.patient_fraction <= 1.0,
             f"patient_fraction must be in [0, 1]; got {self.patient_fraction}"),
            (-1.0 < self.noise_correlation < 1.0,
             f"noise_correlation must be in (-1, 1); got {self.noise_correlation}"),
            (0.5 <= self.t1_voxel_size <= 8.0,
             f"t1_voxel_size must be between 0.5 and 8 mm; got {self.t1_voxel_size}"),
            (1.0 <= self.bold_voxel_size <= 10.0,
             f"bold_voxel_size must be between 1 and 10 mm; got {self.bold_voxel_size}"),
            (self.n_volumes >= 10, f"n_volumes must be at least 10; got {self.n_volumes}"),
            (0.2 <= self.repetition_time <= 10.0,
             f"repetition_time must be between 0.2 and 10 s; got {self.repetition_time}"),
            (len(self.t1_noise) >= 1 and len(self.site_gm_contrast) >= 1,
             "t1_noise and site_gm_contrast need at least one value"),
            (self.atlas.isalnum(), f"atlas id must be alphanumeric; got {self.atlas!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        for name in ("patient_gap", "patient_gap_struct", "patient_gap_func"):
            value = getattr(self, name)
            if value is None and name != "patient_gap":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number of years; got {value!r}")
        self._check_subtypes()
        return self

    def _check_subtypes(self) -> None:
        mix = self.patient_subtypes
        example = "e.g. shared=0.4,structural=0.3,functional=0.3"
        if not isinstance(mix, tuple):
            raise UsageError(
                f"patient_subtypes must be (name, fraction) pairs ({example}); got {mix!r}"
            )
        seen = set()
        for entry in mix:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise UsageError(
                    f"patient_subtypes must be (name, fraction) pairs ({example}); got {entry!r}"
                )
            name, fraction = entry
            if name not in PATIENT_SUBTYPES:
                raise UsageError(
                    f"unknown patient subtype {name!r}; choose among {', '.join(PATIENT_SUBTYPES)}"
                )
            if name in seen:
                raise UsageError(f"patient subtype {name!r} is given twice in patient_subtypes")
            seen.add(name)
            if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) \
                    or not 0.0 <= fraction <= 1.0:
                raise UsageError(
                    f"the fraction of patient subtype {name!r} must be in [0, 1]; got {fraction!r}"
                )
        total = sum(fraction for _, fraction in mix)
        if mix and abs(total - 1.0) > 1e-6:
            raise UsageError(
                f"the patient subtype fractions must sum to 1; got {total:g} "
                f"({', '.join(f'{n}={f:g}' for n, f in mix)})"
            )

    @property
    def subtype_mix(self) -> tuple:
        """The patient subtype mix in force: ``patient_subtypes``, or all ``shared``."""
        return self.patient_subtypes or (("shared", 1.0),)

    def subtype_gaps(self) -> dict:
        """Return the true excess (years) of the structural and functional latent ages per subtype.

        Returns
        -------
        dict
            ``{subtype: (structural_excess, functional_excess)}`` for every
            subtype of :data:`PATIENT_SUBTYPES`.
        """
        struct = self.patient_gap if self.patient_gap_struct is None else self.patient_gap_struct
        func = self.patient_gap if self.patient_gap_func is None else self.patient_gap_func
        return {"shared": (float(struct), float(func)), "structural": (float(struct), 0.0),
                "functional": (0.0, float(func))}

    def site_value(self, values: tuple, site: int) -> float:
        """Return the per-site value of a per-site tuple (cycled when shorter)."""
        return float(values[site % len(values)])

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dictionary."""
        out = dataclasses.asdict(self)
        out["regional_weights"] = dict(self.regional_weights)
        out["patient_subtypes"] = dict(self.patient_subtypes)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


#: Presets: overrides applied on top of the defaults of :class:`SimulationParams`.
PRESETS: dict[str, dict] = {
    "default": {},
    "demo": {
        "n_subjects": 40,
        # patients modelled on MCI converters (a gap of about +6 years at baseline and +9 at
        # follow-up; Gaser et al. 2013, PLoS One 8:e67346), large enough for 12 patients
        # against 28 controls to show it (the report states the detectable difference)
        "patient_gap": 7.0,
        # a low-motion cohort: 100-volume runs, where one extra spike moves the mean FD past
        # the 0.3 mm QC threshold
        "motion_spikes": 1.0,
        "motion_drift_mm": 0.3,
        "t1_voxel_size": 2.5,
        "bold_voxel_size": 4.0,
        "n_volumes": 100,
    },
    "test": {
        "n_subjects": 4,
        "t1_voxel_size": 4.0,
        "t1_fov": (184.0, 232.0, 216.0),
        "bold_voxel_size": 6.0,
        "bold_fov": (180.0, 216.0, 144.0),
        "n_volumes": 24,
    },
}


def parse_patient_subtypes(value) -> tuple:
    """Read a patient subtype mix into ``((name, fraction), ...)``.

    Parameters
    ----------
    value : str, dict or sequence of pairs
        ``"shared=0.4,structural=0.3,functional=0.3"`` (the command line's
        form), ``{"shared": 0.4, ...}`` or ``[("shared", 0.4), ...]``; an empty
        string or sequence gives ``()`` (every patient ``shared``).

    Returns
    -------
    tuple of (str, float)
        The mix, in the order given (checked by :meth:`SimulationParams.validate`).

    Raises
    ------
    UsageError
        If an item is not ``name=fraction`` or a fraction is not a number.

    Examples
    --------
    >>> parse_patient_subtypes("shared=0.5, structural=0.5")
    (('shared', 0.5), ('structural', 0.5))
    """
    example = "e.g. shared=0.4,structural=0.3,functional=0.3"
    if isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            name, sep, fraction = item.partition("=")
            if not sep:
                raise UsageError(f"patient subtypes must be NAME=FRACTION items ({example}); "
                                 f"got {item!r}")
            pairs.append((name.strip(), fraction.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        try:
            pairs = [tuple(entry) for entry in value]
        except TypeError:
            raise UsageError(f"patient subtypes must be (name, fraction) pairs ({example}); "
                             f"got {value!r}") from None
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise UsageError(f"patient subtypes must be (name, fraction) pairs ({example}); "
                             f"got {pair!r}")
        name, fraction = pair
        try:
            number = float(fraction)
        except (TypeError, ValueError):
            raise UsageError(f"the fraction of patient subtype {name!r} must be a number; "
                             f"got {fraction!r}") from None
        if isinstance(fraction, bool) or not math.isfinite(number):
            raise UsageError(f"the fraction of patient subtype {name!r} must be a number; "
                             f"got {fraction!r}")
        out.append((str(name), number))
    return tuple(out)


def resolve_params(preset: str = "default", **overrides) -> SimulationParams:
    """Build validated parameters from a preset and keyword overrides.

    Parameters
    ----------
    preset : {"default", "demo", "test"}
        Starting point.
    **overrides
        Any field of :class:`SimulationParams`; ``None`` values are ignored.

    Returns
    -------
    SimulationParams

    Raises
    ------
    UsageError
        Unknown preset or parameter name, or a value out of range.

    Examples
    --------
    >>> resolve_params("demo", n_subjects=10).t1_voxel_size
    2.5
    """
    if preset not in PRESETS:
        raise UsageError(
            f"unknown simulation preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    names = {f.name for f in dataclasses.fields(SimulationParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(
            f"unknown simulation parameter(s) {', '.join(unknown)}; known parameters: "
            f"{', '.join(sorted(names - {'preset'}))}"
        )
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("t1_fov", "bold_fov", "t1_noise", "site_gm_contrast", "regional_weights"):
        if key in values:
            values[key] = tuple(
                tuple(v) if isinstance(v, list) else v for v in values[key]
            ) if key == "regional_weights" else tuple(values[key])
    if "patient_subtypes" in values:
        values["patient_subtypes"] = parse_patient_subtypes(values["patient_subtypes"])
    return SimulationParams(**values, preset=preset).validate()
