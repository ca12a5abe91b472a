"""PIDRegressor takes pandas tables as participants × features, or refuses them clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError


def _tables(n=200, widths=(5, 250), seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    index = pd.Index([f"sub-{i:03d}" for i in range(n)], name="participant_id")
    frames = {}
    for name, width in zip(("a", "b"), widths):
        values = np.outer(age, rng.normal(size=width)) / 50 + rng.normal(size=(n, width))
        frames[name] = pd.DataFrame(values, index=index, columns=[f"{name}{k}" for k in range(width)])
    return frames, age


def _model():
    return PIDRegressor(max_epochs=3, latent_dim=2, hidden=[8], batch_size=64, random_state=0, device="cpu")


@pytest.mark.parametrize("widths", [(5, 250), (250, 5)])
def test_tables_are_participants_by_features(widths):
    frames, age = _tables(widths=widths)
    model = _model().fit(frames, age)
    # rows are participants: a 200 x 250 table is 250 features, never 200 "participants"
    assert model.input_shapes_ == {"a": [widths[0]], "b": [widths[1]]}
    arrays = {m: f.to_numpy() for m, f in frames.items()}
    np.testing.assert_allclose(model.predict(frames), model.predict(arrays), rtol=1e-5)


def test_tables_of_other_participants_are_refused():
    frames, age = _tables()
    frames["b"] = frames["b"].iloc[::-1]
    with pytest.raises(UsageError, match="different row indexes"):
        _model().fit(frames, age)


def test_a_table_with_text_columns_is_refused():
    frames, age = _tables()
    frames["a"]["site"] = "site1"
    with pytest.raises(UsageError, match=r"non-numeric column\(s\) \['site'\]"):
        _model().fit(frames, age)
