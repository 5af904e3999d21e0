"""scikit-learn's estimator checks for image estimators: which apply, and what replaces the rest.

scikit-learn's checks (:func:`sklearn.utils.estimator_checks.check_estimator`) feed tabular
data: ``(n_samples, n_features)`` float arrays from ``make_blobs``. The estimators of this
package take images, ``(N, H, W)`` / ``(N, H, W, C)`` stacks or lists of arrays, PIL images
and paths, and their ``__sklearn_tags__`` say so (``two_d_array=False``), upon which
scikit-learn would skip *every* check. :func:`sklearn_checks` instead runs them all and
skips only those listed in :data:`CHECKS_REPLACED_FOR_IMAGES`: the checks that feed a
tabular array, each with the reason it cannot apply and the image test in ``tests/`` that
asserts the same property on images. Every other check must pass unchanged.

This is the one place that lists them (after nilearn's ``_utils/estimator_checks.py``);
``tests/test_sklearn_compat.py`` fails when sklearn adds a check that is neither run nor
listed here, when a listed check no longer exists, and when a named replacement test is
missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

from sklearn.utils.estimator_checks import estimator_checks_generator


@dataclass(frozen=True)
class ReplacedCheck:
    """Why a scikit-learn check cannot apply to images, and the test that replaces it.

    Attributes
    ----------
    reason : str
        What in the check assumes tabular data.
    replacement : str
        ``"tests/<file>.py::<test name>"`` asserting the same property on images.
    """

    reason: str
    replacement: str


_TABULAR = "feeds tabular (n_samples, n_features) arrays, not images"
_COMPAT = "tests/test_sklearn_compat.py::"
_PERSISTENCE = "tests/test_persistence.py::"

#: Every scikit-learn check that cannot apply to image input, keyed by check function name
#: (all keyword variants of a check, such as ``readonly_memmap=True``, share the entry).
CHECKS_REPLACED_FOR_IMAGES: dict[str, ReplacedCheck] = {
    "check_fit_score_takes_y": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_methods_take_y_second_and_accept_none",
    ),
    "check_estimators_overwrite_params": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_fit_returns_self_is_idempotent_and_changes_neither_parameters_nor_images",
    ),
    "check_dont_overwrite_parameters": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_fit_sets_only_trailing_underscore_public_attributes",
    ),
    "check_estimators_fit_returns_self": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_fit_returns_self_is_idempotent_and_changes_neither_parameters_nor_images",
    ),
    "check_readonly_memmap_input": ReplacedCheck(
        _TABULAR + "; here they are memory-mapped",
        _COMPAT + "test_read_only_memory_mapped_images",
    ),
    "check_n_features_in_after_fitting": ReplacedCheck(
        "n_features_in_ is a tabular notion: images of any size are resized to input_size, so "
        "there is no fixed feature count to record or enforce",
        _COMPAT + "test_images_of_any_size_are_accepted_after_fit",
    ),
    "check_n_features_in": ReplacedCheck(
        "n_features_in_ is a tabular notion (see check_n_features_in_after_fitting)",
        _COMPAT + "test_images_of_any_size_are_accepted_after_fit",
    ),
    "check_fit2d_1feature": ReplacedCheck(
        "a one-feature table has no image counterpart; the nearest, tiny images, are resized",
        _COMPAT + "test_images_of_any_size_are_accepted_after_fit",
    ),
    "check_positive_only_tag_during_fit": ReplacedCheck(
        _TABULAR + "; here with negative values (pixels must be non-negative)",
        _COMPAT + "test_bad_pixel_values_and_types_are_clear_errors",
    ),
    "check_estimators_dtypes": ReplacedCheck(
        _TABULAR + "; here of float32, int32 and int64",
        _COMPAT + "test_pixel_dtypes_give_the_same_scores",
    ),
    "check_complex_data": ReplacedCheck(
        _TABULAR + "; here complex, and expects scikit-learn's own error wording",
        _COMPAT + "test_bad_pixel_values_and_types_are_clear_errors",
    ),
    "check_dtype_object": ReplacedCheck(
        _TABULAR + "; here of dtype object",
        _COMPAT + "test_bad_pixel_values_and_types_are_clear_errors",
    ),
    "check_estimators_nan_inf": ReplacedCheck(
        _TABULAR + "; here holding NaN and inf",
        _COMPAT + "test_bad_pixel_values_and_types_are_clear_errors",
    ),
    "check_estimators_empty_data_messages": ReplacedCheck(
        _TABULAR + "; here with zero rows or columns, and expects scikit-learn's own error wording",
        _COMPAT + "test_empty_and_wrongly_shaped_input_are_clear_errors",
    ),
    "check_fit2d_1sample": ReplacedCheck(
        _TABULAR + "; here one row, and expects scikit-learn's own error wording",
        _COMPAT + "test_empty_and_wrongly_shaped_input_are_clear_errors",
    ),
    "check_fit2d_predict1d": ReplacedCheck(
        _TABULAR + "; here it predicts on a 1-D row",
        _COMPAT + "test_empty_and_wrongly_shaped_input_are_clear_errors",
    ),
    "check_estimator_sparse_tag": ReplacedCheck(
        _TABULAR + "; here sparse, and expects scikit-learn's own error wording",
        _COMPAT + "test_sparse_matrices_are_refused",
    ),
    "check_estimator_sparse_array": ReplacedCheck(
        _TABULAR + "; here sparse, and expects scikit-learn's own error wording",
        _COMPAT + "test_sparse_matrices_are_refused",
    ),
    "check_estimator_sparse_matrix": ReplacedCheck(
        _TABULAR + "; here sparse, and expects scikit-learn's own error wording",
        _COMPAT + "test_sparse_matrices_are_refused",
    ),
    "check_pipeline_consistency": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_pipeline_of_transformers_and_detector",
    ),
    "check_estimators_pickle": ReplacedCheck(
        _TABULAR,
        _PERSISTENCE + "test_joblib_round_trip_gives_identical_scores_and_maps",
    ),
    "check_f_contiguous_array_estimator": ReplacedCheck(
        _TABULAR + "; here Fortran-ordered",
        _COMPAT + "test_memory_layout_does_not_change_scores",
    ),
    "check_array_api_input": ReplacedCheck(
        _TABULAR + "; here NumPy input, compared with array API dispatch on and off",
        _COMPAT + "test_array_api_dispatch_does_not_change_results",
    ),
    "check_outliers_fit_predict": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_fit_predict_equals_fit_then_predict",
    ),
    "check_outliers_train": ReplacedCheck(
        _TABULAR + "; here it also asks that contamination set the exact fraction of training outliers",
        _COMPAT + "test_outlier_methods_agree_in_shape_type_and_sign",
    ),
    "check_classifier_data_not_an_array": ReplacedCheck(
        _TABULAR + "; here wrapped in a non-array sequence type",
        _COMPAT + "test_lists_and_arrays_give_the_same_scores",
    ),
    "check_non_transformer_estimators_n_iter": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_n_iter_counts_the_epochs_run",
    ),
    "check_methods_sample_order_invariance": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_per_image_results_do_not_depend_on_order_or_batching",
    ),
    "check_methods_subset_invariance": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_per_image_results_do_not_depend_on_order_or_batching",
    ),
    "check_dict_unchanged": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_predicting_does_not_change_the_detector",
    ),
    "check_fit_idempotent": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_fit_returns_self_is_idempotent_and_changes_neither_parameters_nor_images",
    ),
    "check_fit_check_is_fitted": ReplacedCheck(
        _TABULAR,
        _COMPAT + "test_unfitted_detector_raises_not_fitted_error",
    ),
}


def check_name(check) -> str:
    """The function name of a scikit-learn check (unwrapping ``functools.partial``)."""
    while hasattr(check, "func"):
        check = check.func
    return check.__name__


def sklearn_checks(estimator) -> Iterator[tuple[object, object, ReplacedCheck | None]]:
    """Yield every scikit-learn check for ``estimator``, with its replacement if it has one.

    scikit-learn yields no check at all for estimators that do not take 2-D arrays; the
    checks are generated here as if the estimator did, and those that feed tabular data
    come with their :class:`ReplacedCheck`, so that the caller skips them.

    Parameters
    ----------
    estimator : estimator instance
        A cheap configuration of the estimator (the checks fit clones of it).

    Yields
    ------
    estimator : estimator instance
    check : callable
        Call ``check(estimator)``.
    replaced : ReplacedCheck or None
        Not None when the check cannot apply to images.
    """
    true_tags = type(estimator).__sklearn_tags__

    def tags_for_check_generation(self):
        tags = true_tags(self)
        tags.input_tags.two_d_array = True
        return tags

    # Only the generation sees the tabular tag; each check later reads the true tags.
    with mock.patch.object(type(estimator), "__sklearn_tags__", tags_for_check_generation):
        checks = list(estimator_checks_generator(estimator, legacy=True))
    for checked_estimator, check in checks:
        yield checked_estimator, check, CHECKS_REPLACED_FOR_IMAGES.get(check_name(check))
