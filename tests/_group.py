"""A small tabular cohort with known truth, built directly as CohortData (no imaging)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_cohort(n=80, *, seed=0, n_sites=2, patient_gap=5.0, patient_fraction=0.3, n_anat=12, n_func=8,
                site_shift=0.0):
    """Controls and patients whose features follow two noisy latent aging variables.

    The structural latent is ``(age_b − 50) / 17 + N(0, 0.5²)`` and the functional one
    ``(age_b − 50) / 17 + N(0, 1)``, with ``age_b`` the brain age: the chronological age, plus
    ``patient_gap`` years for patients. Each feature is a random gain times a latent plus noise;
    ``site_shift`` adds a location effect to every feature of the second site.
    """
    from brainage.cohort.data import CohortData, ModalityInput

    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(20, 80, n), 2)
    patient = np.zeros(n, bool)
    patient[rng.permutation(n)[: round(patient_fraction * n)]] = True
    site_idx = np.arange(n) % n_sites
    rng.shuffle(site_idx)
    brain_age = age + patient_gap * patient
    s = (brain_age - 50) / 17 + rng.normal(0, 0.5, n)
    f = (brain_age - 50) / 17 + rng.normal(0, 1.0, n)
    second = (site_idx == 1)[:, None]
    anat = s[:, None] * rng.normal(1, 0.3, n_anat) + rng.normal(0, 0.5, (n, n_anat)) + site_shift * second
    func = f[:, None] * rng.normal(1, 0.3, n_func) + rng.normal(0, 0.5, (n, n_func)) + site_shift * second
    keys = [f"sub-{i + 1:03d}" for i in range(n)]
    parts = pd.DataFrame(
        {
            "participant_id": keys,
            "session": None,
            "age": age,
            "sex": np.where(rng.random(n) < 0.5, "F", "M"),
            "site": [f"site{k + 1}" for k in site_idx],
            "group": np.where(patient, "patient", "control"),
            "is_control": ~patient,
            "modalities": "anat+func",
        },
        index=pd.Index(keys, name="key"),
    )

    def tab(name, values, kind):
        cols = [f"{name}_{j}" for j in range(values.shape[1])]
        frame = pd.DataFrame(values, index=parts.index, columns=cols)
        return ModalityInput(name=name, kind=kind, features=frame, paths=None,
                             spec={"kind": kind, "atlas": "Synthetic", "feature_names": cols})

    inputs = {"anat": tab("anat", anat, "regional"), "func": tab("func", func, "connectivity")}
    exclusions = pd.DataFrame(columns=["participant_id", "session", "modality", "reason"])
    return CohortData(participants=parts, inputs=inputs, exclusions=exclusions)


def assert_out_of_fold(attr, participants, folds, direct, *, n_folds=3, atol=1e-4):
    """Each participant's attributions come from the models that did not train on it.

    A control's are those of the one model whose fold held it out; a patient's, the mean over
    the ``n_folds`` fold models. ``direct(train, target, k)`` refits fold ``k`` on ``train``
    and returns the attributions of ``target``. A canary checks that a model trained on the
    controls themselves explains them differently (the test would see a leak).
    """
    controls = participants.index[participants["is_control"]]
    patients = participants.index[~participants["is_control"]]
    assert set(attr.values.index) == set(participants.index)
    assert (attr.n_models.loc[controls] == 1).all() and (attr.n_models.loc[patients] == n_folds).all()
    per_fold = []
    for k in range(n_folds):
        train = list(controls[folds.loc[controls] != k])
        test = list(controls[folds.loc[controls] == k])
        found = direct(train, test + list(patients), k)
        np.testing.assert_allclose(attr.values.loc[test], found.loc[test], atol=atol)
        per_fold.append(found.loc[patients])
    np.testing.assert_allclose(attr.values.loc[patients], sum(per_fold) / n_folds, atol=atol)
    leaky = direct(list(controls), list(controls), 0)
    assert np.abs(leaky.to_numpy() - attr.values.loc[controls].to_numpy()).max() > 1e-3
