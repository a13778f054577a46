"""scikit-learn's own estimator checks on both of the project's regressors.

Both regressors take X as two columns, ``product_code`` and ``orders_placed`` (the pooled one
also an optional third, ``tranche``); the checks that build X of another width cannot apply to
them and are expected to fail, each with its reason below. Every other check must pass.
"""
from __future__ import annotations

from typing import Any, Dict

from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline.training.estimator import DispatchTimeRegressor
from pipeline.training.pooling import PooledDispatchRegressor

TWO_COLUMNS = ("X is two columns, product_code and orders_placed; this check fits on {} "
               "columns of random numbers")
THREE_COLUMNS = TWO_COLUMNS.format(3) + " (only the pooled regressor reads a third, tranche)"
NEW_CODES = ("predict answers only the product codes the model learned (KeyError otherwise, "
             "as the service's 422); every row of this check's X is a new code")

POOLED_FAILS = {
    "check_n_features_in_after_fitting": TWO_COLUMNS.format(4),
    "check_positive_only_tag_during_fit": TWO_COLUMNS.format(4),
    "check_estimators_dtypes": TWO_COLUMNS.format(5),
    "check_dtype_object": TWO_COLUMNS.format(10),
    "check_regressors_train": TWO_COLUMNS.format(10),
    "check_regressor_data_not_an_array": TWO_COLUMNS.format(10),
    "check_regressors_no_decision_function": TWO_COLUMNS.format(10),
    "check_regressors_int": TWO_COLUMNS.format(10),
    "check_fit2d_1sample": TWO_COLUMNS.format(10),
}
PER_CODE_FAILS = {
    **POOLED_FAILS,
    "check_fit_score_takes_y": THREE_COLUMNS,
    "check_dont_overwrite_parameters": THREE_COLUMNS,
    "check_pipeline_consistency": THREE_COLUMNS,
    "check_estimators_nan_inf": THREE_COLUMNS,
    "check_estimators_pickle": THREE_COLUMNS,
    "check_f_contiguous_array_estimator": THREE_COLUMNS,
    "check_supervised_y_2d": THREE_COLUMNS,
    "check_methods_sample_order_invariance": THREE_COLUMNS,
    "check_methods_subset_invariance": THREE_COLUMNS,
    "check_dict_unchanged": THREE_COLUMNS,
    "check_fit_idempotent": THREE_COLUMNS,
    "check_fit2d_predict1d": NEW_CODES,
}


def expected_failures(estimator: Any) -> Dict[str, str]:
    """The checks that cannot apply to an estimator, with why."""
    return PER_CODE_FAILS if isinstance(estimator, DispatchTimeRegressor) else POOLED_FAILS


@parametrize_with_checks(
    [DispatchTimeRegressor(min_rows_per_code=5, n_jobs=1),
     PooledDispatchRegressor(min_rows_per_code=5, n_jobs=1)],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)
