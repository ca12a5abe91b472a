"""Regional ground truth: how fast each atlas region changes with the latent ages.

:func:`regional_truth` builds ``sourcedata/brainage-truth/regions_truth.tsv``:
one row per region of the simulator's atlas and one for the lateral
ventricles, with the true rates of change of the generative model, for
checking what an interpretation method says about regions. Every number comes
from the functions that make the images (:func:`~.anatomy.regional_weight_of`,
:func:`~.aging.aged_tissues`, :func:`~.bold.parcels_of`,
:func:`~.bold.couplings`), so the table cannot drift from the model.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REGIONS_TRUTH_COLUMNS", "VENTRICLES_NAME", "regional_truth"]

#: Name of the extra row of the lateral ventricles (both hemispheres).
VENTRICLES_NAME = "Lateral_Ventricles"

#: Column descriptions of ``regions_truth.tsv`` (written as its JSON sidecar).
REGIONS_TRUTH_COLUMNS: dict[str, dict] = {
    "atlas": {"Description": "atlas id (brainage.atlases) of the simulator's regions"},
    "index": {"Description": "label value of the region in the atlas image; n/a on the lateral "
                             "ventricles row, which pools the atlas's lateral-ventricle labels"},
    "name": {"Description": f"region name from the atlas label table ({VENTRICLES_NAME} for the "
                            "ventricles row)"},
    "hemisphere": {"Description": "hemisphere from the atlas label table (bilateral for the "
                                  "ventricles row)"},
    "lobe": {"Description": "lobe from the atlas label table"},
    "network": {"Description": "network the simulator assigns the region's BOLD parcel "
                               "(brainage.simulate.bold.network_of); n/a where the region is not "
                               "a BOLD parcel"},
    "bold_parcel": {"Description": "1 if the region is a BOLD parcel (has a truth time series), "
                                   "0 if not (ventricles, brain stem, white matter, or absent from "
                                   "the functional model grid)",
                    "Levels": {"0": "not a parcel", "1": "parcel"}},
    "regional_weight": {"Description": "multiplier of the grey-matter loss rate painted on the "
                                       "region's voxels (regional_weights; 1 elsewhere) before the "
                                       "3 mm smoothing; n/a on the ventricles row"},
    "template_volume_ml": {"Description": "grey-matter volume of the region in the template at "
                                          "age_reference on the structural model grid (lateral-"
                                          "ventricle volume on the ventricles row)",
                           "Units": "ml"},
    "gm_change_percent_per_decade": {
        "Description": "nominal rate of grey-matter volume change of the region in simulated "
                       "controls: -100 x 10 x gm_loss_per_year x regional_weight, percent of the "
                       "template volume per decade of structural age above age_reference "
                       "(negative: loss); 0 on the ventricles row",
        "Units": "percent per decade"},
    "ventricle_growth_mm_per_decade": {
        "Description": "outward growth of the lateral ventricles, 10 x "
                       "ventricle_growth_mm_per_year; 0 except on the ventricles row",
        "Units": "mm per decade"},
    "volume_change_percent_per_decade": {
        "Description": "realised rate of volume change in the simulator's template (no individual "
                       "anatomy): grey matter of the region (lateral-ventricle volume on the "
                       "ventricles row) from aged_tissues at structural ages max(age_min, "
                       "age_reference) and age_max, in percent of the volume at age_reference per "
                       "decade; includes the smoothing of the regional weights, the loss from the "
                       "CSF side, the 0.9 clip and the tissue the growing ventricles take",
        "Units": "percent per decade"},
    "structural_rank": {"Description": "rank of |volume_change_percent_per_decade| over all rows, "
                                       "ventricles included (1 = fastest change; ties share the "
                                       "best rank; n/a where the region has no grey matter)"},
    "coupling_change_per_decade": {
        "Description": "change per decade of functional age of the within-network coupling "
                       "(shared-variance fraction) of the region's network: -dmn_coupling_loss/6 "
                       "for the default-mode network, -network_coupling_loss/6 for the others, 0 "
                       "for network 'other' and for non-parcels (mean rate of bold.couplings "
                       "between age_min and age_max)",
        "Units": "fraction of variance per decade"},
    "global_coupling_change_per_decade": {
        "Description": "change per decade of functional age of the global (between-network) "
                       "coupling every parcel shares: global_coupling_gain/6; 0 for non-parcels",
        "Units": "fraction of variance per decade"},
    "amplitude_change_per_decade": {
        "Description": "change per decade of functional age of the amplitude (standard deviation) "
                       "of the region's true parcel time series: -100 x bold_signal_change x "
                       "amplitude_loss/6; 0 for non-parcels",
        "Units": "percent signal change per decade"},
}


def _label_sums(labels: np.ndarray, volume: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(np.clip(labels, 0, None).ravel(), weights=volume.ravel().astype(np.float64),
                       minlength=n)


def regional_truth(params, tpl, btpl):
    """Compute the true rates of change of every atlas region and of the lateral ventricles.

    Parameters
    ----------
    params : SimulationParams
    tpl : Templates
        Structural model grid (the one the T1w images are made from).
    btpl : Templates
        Functional model grid (the one the BOLD parcels are taken from).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`REGIONS_TRUTH_COLUMNS`, one row per row of the
        atlas label table, then the lateral-ventricles row.
    """
    import pandas as pd

    from .aging import aged_tissues
    from .anatomy import regional_weight_of
    from .bold import couplings, network_coupling, parcels_of

    table = tpl.label_table
    idx = table["index"].to_numpy().astype(int)
    n = max(int(idx.max()), int(tpl.labels.max())) + 1
    voxel_ml = tpl.voxel_size**3 / 1000.0

    # Structure: nominal rate from the regional weights, realised rate from aged_tissues.
    weights = regional_weight_of(table, params.regional_weights).astype(np.float64)
    nominal = -100.0 * 10.0 * params.gm_loss_per_year * weights
    flat = np.zeros(tpl.shape, np.float32)
    start = max(params.age_min, params.age_reference)
    end = max(params.age_max, start + 10.0)
    gm, vent = {}, {}
    for age in dict.fromkeys((params.age_reference, start, end)):
        tissues = aged_tissues(tpl, age, params, flat)
        gm[age] = _label_sums(tpl.labels, tissues["gm"], n)[idx]
        vent[age] = float(tissues["ventricles"].sum(dtype=np.float64))
        del tissues
    decades = (end - start) / 10.0
    base = gm[params.age_reference]
    with np.errstate(divide="ignore", invalid="ignore"):
        realised = np.where(base > 0, 100.0 * (gm[end] - gm[start]) / base / decades, np.nan)
    vent_base = vent[params.age_reference]
    vent_rate = 100.0 * (vent[end] - vent[start]) / vent_base / decades

    # Function: networks of the BOLD parcels, mean rates of the couplings over the age range.
    parcels, networks = parcels_of(btpl)
    network = dict(zip(parcels["index"].astype(int), networks))
    young, old = couplings(params.age_min, params), couplings(params.age_max, params)
    f_decades = (params.age_max - params.age_min) / 10.0
    in_bold = np.array([i in network for i in idx])
    coupling = np.array([
        (network_coupling(network[i], old) - network_coupling(network[i], young)) / f_decades
        if i in network else 0.0 for i in idx
    ])
    glob = np.where(in_bold, (old["global"] - young["global"]) / f_decades, 0.0)
    amplitude = np.where(in_bold, 100.0 * (old["amplitude"] - young["amplitude"]) / f_decades, 0.0)

    def column(name, fill):
        if name in table.columns:
            return table[name].astype(str).tolist()
        return [fill] * len(table)

    rows = pd.DataFrame({
        "atlas": [params.atlas] * (len(table) + 1),
        "index": pd.array([*idx.tolist(), None], dtype="Int64"),
        "name": [*table["name"].astype(str).tolist(), VENTRICLES_NAME],
        "hemisphere": [*column("hemisphere", "n/a"), "bilateral"],
        "lobe": [*column("lobe", "n/a"), "ventricle"],
        "network": [*(network.get(i, "n/a") for i in idx), "n/a"],
        "bold_parcel": [*in_bold.astype(int).tolist(), 0],
        "regional_weight": [*weights.tolist(), np.nan],
        "template_volume_ml": [*(base * voxel_ml).tolist(), vent_base * voxel_ml],
        "gm_change_percent_per_decade": [*nominal.tolist(), 0.0],
        "ventricle_growth_mm_per_decade": [0.0] * len(table)
        + [10.0 * params.ventricle_growth_mm_per_year],
        "volume_change_percent_per_decade": [*realised.tolist(), vent_rate],
        "structural_rank": 0,
        "coupling_change_per_decade": [*coupling.tolist(), 0.0],
        "global_coupling_change_per_decade": [*glob.tolist(), 0.0],
        "amplitude_change_per_decade": [*amplitude.tolist(), 0.0],
    })
    floats = rows.select_dtypes("float64").columns
    rows[floats] = rows[floats].round(6)
    speed = rows["volume_change_percent_per_decade"].abs()
    rows["structural_rank"] = speed.rank(ascending=False, method="min",
                                         na_option="keep").astype("Int64")
    return rows[list(REGIONS_TRUTH_COLUMNS)]
