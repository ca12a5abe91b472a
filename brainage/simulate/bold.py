"""Resting-state BOLD: network time series, head motion, physiology, the 4D image.

Parcel signals mix a global signal, one signal per network and a private
signal, all band-limited to 0.01–0.1 Hz::

    p_i(t) = sqrt(c_g) G(t) + sqrt(c_k(i)) N_k(i)(t) + sqrt(1 − c_g − c_k(i)) E_i(t)

The within-network couplings ``c_k`` fall and the global coupling ``c_g``
rises with the latent functional age; the amplitude of the fluctuations
falls with it. Only the functional latent changes the BOLD images: the
anatomy under the EPI is the participant's at a fixed reference age.
"""

from __future__ import annotations

import numpy as np

from .aging import epi_intensity
from .anatomy import region_kind_indices, rigid_matrix
from .geometry import native_sample, warp, warp_coordinates

__all__ = [
    "couplings",
    "draw_motion",
    "framewise_displacement",
    "network_coupling",
    "parcel_signals",
    "parcels_of",
    "synthesize_bold",
    "true_bold_in_mni",
    "true_mni_to_native",
]

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _bandlimited(rng, n_signals: int, n_volumes: int, tr: float, low=0.01, high=0.1):
    """Z-scored Gaussian signals band-passed to [low, high] Hz (Butterworth, zero phase)."""
    from scipy import signal

    nyquist = 0.5 / tr
    high = min(high, 0.9 * nyquist)
    pad = 64
    white = rng.standard_normal((n_signals, n_volumes + 2 * pad))
    sos = signal.butter(3, [low / nyquist, high / nyquist], btype="bandpass", output="sos")
    out = signal.sosfiltfilt(sos, white, axis=1)[:, pad:-pad]
    out -= out.mean(axis=1, keepdims=True)
    out /= out.std(axis=1, keepdims=True)
    return out


def couplings(functional_age: float, params) -> dict:
    """Network couplings and amplitude at a functional age.

    Returns
    -------
    dict
        ``dmn``, ``network``, ``global`` (shared-variance fractions) and
        ``amplitude`` (fraction of baseline).
    """
    t = (functional_age - params.age_reference) / 60.0
    glob = float(np.clip(params.global_coupling + params.global_coupling_gain * t, 0.0, 0.5))
    dmn = float(np.clip(params.dmn_coupling - params.dmn_coupling_loss * t, 0.0, 0.95 - glob))
    net = float(np.clip(params.network_coupling - params.network_coupling_loss * t, 0.0,
                        0.95 - glob))
    amp = params.bold_signal_change * max(0.2, 1.0 - params.amplitude_loss * t)
    return {"dmn": dmn, "network": net, "global": glob, "amplitude": float(amp)}


#: Regions of the default-mode network, by name, for atlases without a network column.
DMN_NAME_PATTERN = (
    r"cingulate.*posterior|posterior.*cingulate|precun|angular|frontal.?medial|paracingulate"
    r"|medial.?(?:pre)?frontal|cingulum.?post"
)


def network_of(table) -> np.ndarray:
    """Network name per atlas label.

    The ``network`` column when the atlas has one; otherwise the ``lobe``
    column, with the default-mode regions (posterior cingulate, precuneus,
    angular gyrus, medial prefrontal cortex) found by name and labelled
    ``default``.
    """
    missing = ["", "nan", "none", "n/a"]
    if "network" in table.columns:
        values = table["network"].astype(str).str.strip()
        if values[~values.str.lower().isin(missing)].nunique() > 1:
            return values.where(~values.str.lower().isin(missing), "other").to_numpy()
    if "lobe" in table.columns:
        values = table["lobe"].astype(str).str.strip()
        values = values.where(~values.str.lower().isin(missing), "other")
    else:
        values = table["name"].astype(str).map(lambda _: "other")
    dmn = table["name"].astype(str).str.contains(DMN_NAME_PATTERN, case=False, regex=True)
    return values.where(~dmn, "default").to_numpy()


def is_dmn(name: str) -> bool:
    """Whether a network name denotes the default-mode network."""
    lowered = name.lower()
    return "default" in lowered or lowered in {"dmn", "dm"}


def network_coupling(network: str, coupling: dict) -> float:
    """Within-network coupling of a parcel of ``network`` (0 for ``other``).

    Parameters
    ----------
    network : str
        Network name (from :func:`network_of`).
    coupling : dict
        Output of :func:`couplings`.

    Returns
    -------
    float
    """
    if network == "other":
        return 0.0
    return coupling["dmn"] if is_dmn(network) else coupling["network"]


def parcels_of(tpl):
    """Return the BOLD parcels of a model grid and their networks.

    Parcels are the atlas regions present on the grid, except the labels that
    carry no neural signal (ventricles, brain stem, white matter; see
    :func:`~brainage.simulate.anatomy.region_kind_indices`).

    Parameters
    ----------
    tpl : Templates
        Model grid of the functional simulation.

    Returns
    -------
    parcels : pandas.DataFrame
        Rows of ``tpl.label_table``, renumbered from 0.
    networks : numpy.ndarray of str
        Network of each parcel (:func:`network_of`).
    """
    table = tpl.label_table
    kinds = region_kind_indices(table)
    parcels = table[~table["index"].isin(kinds["excluded"])]
    present = set(np.unique(tpl.labels).tolist())
    parcels = parcels[parcels["index"].isin(present)].reset_index(drop=True)
    return parcels, network_of(parcels)


def parcel_signals(rng, networks: np.ndarray, functional_age: float, params) -> np.ndarray:
    """Draw the true neural signals of the parcels (unit variance), shape (T, n_parcels)."""
    c = couplings(functional_age, params)
    names = sorted(set(networks))
    n_vol = params.n_volumes
    shared = _bandlimited(rng, 1 + len(names), n_vol, params.repetition_time)
    private = _bandlimited(rng, len(networks), n_vol, params.repetition_time)
    out = np.empty((n_vol, len(networks)))
    for i, net in enumerate(networks):
        ck = network_coupling(net, c)
        k = 1 + names.index(net)
        out[:, i] = (
            np.sqrt(c["global"]) * shared[0]
            + np.sqrt(ck) * shared[k]
            + np.sqrt(max(0.0, 1.0 - c["global"] - ck)) * private[i]
        )
    return out


def draw_motion(rng, n_volumes: int, params) -> np.ndarray:
    """Head motion of every volume: slow drift, jitter and a few transient spikes.

    Returns
    -------
    numpy.ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y, rot_z``
        (radians) of each volume relative to the head position at zero
        motion; the first volume has zero motion.
    """
    steps = rng.standard_normal((n_volumes, 6))
    steps[0] = 0.0
    drift = np.cumsum(steps, axis=0) / np.sqrt(n_volumes)
    scale = np.array([1.0, 1.0, 1.0, 1 / 50, 1 / 50, 1 / 50]) * params.motion_drift_mm
    motion = drift * scale
    motion[1:] += rng.standard_normal((n_volumes - 1, 6)) * 0.02 * scale / params.motion_drift_mm
    n_spikes = max(1, int(rng.poisson(params.motion_spikes)))
    for _ in range(n_spikes):
        at = int(rng.integers(1, n_volumes))
        length = int(rng.integers(1, 3))
        direction = rng.standard_normal(6)
        direction /= np.linalg.norm(direction)
        size = rng.uniform(0.5, 1.5)
        motion[at:at + length] += direction * size * np.array([1, 1, 1, 1 / 50, 1 / 50, 1 / 50])
    motion -= motion[0]
    return motion


def framewise_displacement(motion: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement (mm); the first value is NaN."""
    diff = np.abs(np.diff(motion, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def synthesize_bold(tpl, tissues, signals, label_values, *, shape, affine, pose, scale,
                    displacement, motion, functional_age, params, rng) -> np.ndarray:
    """Image the BOLD run on the native EPI grid.

    Parameters
    ----------
    tpl : Templates
        Model grid of the functional simulation.
    tissues : dict
        Reference-age tissue maps on that grid.
    signals : numpy.ndarray of shape (T, n_parcels)
        True parcel signals (unit variance).
    label_values : numpy.ndarray
        Atlas value of each parcel column.
    shape, affine : tuple, numpy.ndarray
        Native EPI grid.
    pose : numpy.ndarray
        Head pose of the run (native ← head).
    scale : float
        Head size factor.
    displacement : numpy.ndarray
        Individual displacement on the model grid (:meth:`Deformation.dense`).
    motion : numpy.ndarray of shape (T, 6)
        Motion parameters (scanner coordinates, rotations about the FOV centre).
    functional_age : float
        Latent functional age (sets the amplitude).
    params : SimulationParams
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray of int16, shape (*shape, T)
    """
    amplitude = couplings(functional_age, params)["amplitude"]
    n_vol = signals.shape[0]
    epi_mni = epi_intensity(tpl, tissues) * 1000.0
    csf_mni = tissues["csf"] + (tpl.mask == 0) * (tpl.head_distance < 3)
    # Everything is pulled into head space once; each volume is then an affine resampling.
    coords = warp_coordinates(tpl, displacement)
    epi_baseline = warp(epi_mni, tpl, displacement, coordinates=coords)
    gm_weight = warp(epi_mni * tissues["gm"], tpl, displacement, coordinates=coords).ravel()
    csf_weight = warp((epi_mni * csf_mni).astype(np.float32), tpl, displacement,
                      coordinates=coords).ravel()
    wm_weight = warp(epi_mni * tissues["wm"], tpl, displacement, coordinates=coords).ravel()
    head_labels = warp(tpl.labels, tpl, displacement, order=0, coordinates=coords)
    del coords
    base_flat = epi_baseline.ravel()
    # Parcel lookup: grid label → column of ``signals`` (-1: no parcel, global signal).
    lut = np.full(int(max(tpl.labels.max(), label_values.max())) + 2, -1, np.int64)
    lut[label_values] = np.arange(len(label_values))
    # Only voxels with tissue signal change from volume to volume.
    active = np.flatnonzero((gm_weight != 0) | (csf_weight != 0) | (wm_weight != 0))
    column = lut[np.clip(head_labels.ravel()[active], 0, None)]
    gm_active = (gm_weight[active] * amplitude).astype(np.float32)
    csf_active = csf_weight[active].astype(np.float32)
    wm_active = wm_weight[active].astype(np.float32)
    neural = np.concatenate([signals, signals.mean(axis=1, keepdims=True)], axis=1)
    neural = neural.astype(np.float32)
    # Physiology aliased into the band: cardiac and respiratory sines in CSF, slow WM signal.
    t = np.arange(n_vol) * params.repetition_time
    nyq = 0.5 / params.repetition_time
    f_card, f_resp = rng.uniform(0.3, 0.95) * nyq, rng.uniform(0.3, 0.95) * nyq
    phys_csf = 0.02 * np.sin(2 * np.pi * f_card * t + rng.uniform(0, 2 * np.pi)) + 0.015 * np.sin(
        2 * np.pi * f_resp * t + rng.uniform(0, 2 * np.pi)
    )
    phys_wm = 0.004 * _bandlimited(rng, 1, n_vol, params.repetition_time, 0.005, 0.05)[0]
    drift_coef = rng.normal(0.0, 0.01, size=2)
    frac = np.linspace(0.0, 1.0, n_vol)
    drift = 1.0 + drift_coef[0] * frac + drift_coef[1] * (frac**2 - 1 / 3)
    spike_volumes = set(np.flatnonzero(
        np.r_[0.0, np.abs(np.diff(motion[:, :3], axis=0)).sum(axis=1)] > 0.4
    ).tolist())

    gm_mean = float(np.mean(epi_mni[tissues["gm"] > 0.5])) if np.any(tissues["gm"] > 0.5) \
        else 700.0
    sigma = gm_mean / params.bold_tsnr
    out = np.empty((*shape, n_vol), np.int16)
    volume = np.empty(tpl.shape, np.float32)
    flat = volume.reshape(-1)
    for k in range(n_vol):
        flat[:] = base_flat
        flat[active] += (gm_active * neural[k][column] + csf_active * np.float32(phys_csf[k])
                         + wm_active * np.float32(phys_wm[k]))
        pose_k = rigid_matrix(motion[k, 3:], motion[k, :3]) @ pose
        value = native_sample(volume, tpl, affine, shape, pose_k, scale) * drift[k]
        if k in spike_volumes:
            value *= 0.97  # spin-history intensity drop on abrupt movement
        value += sigma * rng.standard_normal(value.shape, dtype=np.float32)
        out[..., k] = np.clip(np.rint(value), 0, 32767).astype(np.int16)
    return out


def true_mni_to_native(points: np.ndarray, pose: np.ndarray, scale: float, deformation,
                       iterations: int = 20) -> np.ndarray:
    """Invert the true native → MNI map for MNI points of shape (N, 3).

    The forward map is ``m = g + u(g)`` with ``g = P⁻¹ x / s``
    (:func:`~brainage.simulate.geometry.native_to_mni`); ``g`` is found by the
    fixed-point iteration ``g ← m − u(g)`` (``u`` is smooth and a few mm, so it
    converges to well below a micrometre in 20 steps), then ``x = P (s g)``.

    Returns
    -------
    numpy.ndarray of shape (N, 3)
        Native scanner coordinates (mm) at zero head motion.
    """
    points = np.asarray(points, np.float64)
    g = points.copy()
    for _ in range(iterations):
        g = points - deformation.evaluate(g).T
    return (np.c_[scale * g, np.ones(len(g))] @ np.asarray(pose).T)[:, :3]


def true_bold_in_mni(root, subject: str, target, mask=None, task: str = "rest") -> np.ndarray:
    """Resample a simulated BOLD run onto an MNI grid with the simulator's TRUE geometry.

    For diagnostics and test fixtures only (it reads the ground truth): each
    volume is sampled (trilinear) through the true head pose, head size,
    individual deformation and per-volume motion written under
    ``sourcedata/brainage-truth/``, so the result is what a perfect motion
    correction and registration would give.

    Parameters
    ----------
    root : path-like
        Simulated dataset root.
    subject : str
        Label with or without ``sub-``.
    target : nibabel.Nifti1Image
        MNI grid (3D).
    mask : numpy.ndarray of bool, optional
        Voxels of the grid to fill (others are 0); default all.
    task : str

    Returns
    -------
    numpy.ndarray of float32, shape (*grid, T)
    """
    import json
    from pathlib import Path

    import nibabel as nib
    import pandas as pd
    from scipy import ndimage

    from .geometry import read_true_geometry

    root = Path(root)
    sub = "sub-" + str(subject).removeprefix("sub-")
    truth = root / "sourcedata" / "brainage-truth" / sub
    geometry = json.loads((truth / "func" / f"{sub}_task-{task}_from-bold_to-MNI152NLin2009aSym"
                                             "_mode-image_xfm.json").read_text())
    _, _, deformation = read_true_geometry(root, sub)
    motion = pd.read_csv(truth / "func" / f"{sub}_task-{task}_desc-motion_timeseries.tsv",
                         sep="\t")[list(MOTION_COLUMNS)].to_numpy()
    img = nib.load(root / sub / "func" / f"{sub}_task-{task}_bold.nii.gz")
    data = np.asarray(img.dataobj, np.float32)
    grid = target.shape[:3]
    keep = np.ones(grid, bool) if mask is None else np.asarray(mask, bool)
    ijk = np.argwhere(keep)
    mni = ijk @ target.affine[:3, :3].T + target.affine[:3, 3]
    native = true_mni_to_native(mni, np.array(geometry["HeadPose"]), geometry["HeadScale"],
                                deformation)
    native = np.c_[native, np.ones(len(native))]
    to_vox = np.linalg.inv(img.affine)
    out = np.zeros((*grid, data.shape[-1]), np.float32)
    for k in range(data.shape[-1]):
        move = to_vox @ rigid_matrix(motion[k, 3:], motion[k, :3])
        vox = (native @ move.T)[:, :3].T
        out[keep, k] = ndimage.map_coordinates(data[..., k], vox, order=1, mode="nearest",
                                               prefilter=False)
    return out
