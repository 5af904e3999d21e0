"""skfastflow.parallel on a real dask cluster: two spawned worker processes of one thread each.

The cluster is started once for the module (each worker imports torch: several seconds on
two busy cores) and closed at its end. Models are tiny (timm's ``test_resnet`` with random
weights, 32-pixel images, one flow step, two epochs), so each fit takes well under a second.
"""

import inspect
import os
import pickle
import subprocess
import sys
import types

import joblib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")

from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402

from skfastflow import FastFlowDetector  # noqa: E402
from skfastflow.cli import load_model, main, save_model  # noqa: E402
from skfastflow.datasets import make_defect_images  # noqa: E402
from skfastflow.batch_scoring import score_files  # noqa: E402
from skfastflow.files import ImageWarning  # noqa: E402
from skfastflow.parallel import (  # noqa: E402
    TorchThreads,
    _in_order,
    connect,
    fit_each,
    parse_scheduler,
    score_files_on_cluster,
)

SIZE = 32
# float32 arithmetic everywhere, so that the figures compared below do not depend on
# whether a CPU has native bfloat16 (where "auto" would train in it).
TINY = dict(
    backbone="test_resnet", pre_trained=False, input_size=SIZE, flow_steps=1, max_iter=2, batch_size=4,
    training_precision="float32", inference_precision="float32", n_threads=1, calibration_cv=None, random_state=0,
)  # fmt: skip
# A module that only this process holds: a worker forked from it would hold it too.
FORK_SENTINEL = "_skfastflow_test_parallel_fork_sentinel"
# Torch's default thread count follows these (MKL's, when torch is built with MKL).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(scope="module")
def client():
    """A local cluster of two worker processes, started through ``connect`` in a hostile setting.

    dask's configuration asks for forked workers, and the environment asks OpenMP and MKL
    for one thread per core (at least 2), as a user's shell may: dask passes such values on
    to its workers instead of its own 1, and torch would follow them. The tests below then
    see what ``connect`` and ``TorchThreads`` do, not what dask or the environment does.
    """
    sys.modules[FORK_SENTINEL] = types.ModuleType(FORK_SENTINEL)
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(max(2, os.cpu_count()))))
    environment = environment_but_pytests()
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}), connect("local:2") as client:
            yield client
        # A local cluster's nannies write variables into this process's environment; connect restores them.
        assert environment_but_pytests() == environment
    finally:
        del sys.modules[FORK_SENTINEL]
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def environment_but_pytests():
    return {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}


@pytest.fixture(scope="module")
def good_images():
    return make_defect_images(12, image_size=SIZE, defect_fraction=0.0, random_state=0).images


def one_torch_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with torch on one thread, as in a worker of the cluster above."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- the scheduler string


@given(st.integers(1, 10_000), st.sampled_from(["", " "]))
def test_local_n_means_n_worker_processes(n_workers, space):
    assert parse_scheduler(f"{space}local:{n_workers}{space}") == n_workers


@given(st.sampled_from(["tcp://10.0.0.5:8786", "tls://scheduler.example:8786", "inproc://x", "10.0.0.5:8786"]))
def test_an_address_is_passed_on_unchanged(address):
    assert parse_scheduler(address) == address


@pytest.mark.parametrize("text", ["local:0", "local:-1", "local:two", "local:", "local:\u00b2", "", "  "])
def test_a_malformed_scheduler_says_what_to_pass(text):
    with pytest.raises(ValueError, match="local:2|local:N"):
        parse_scheduler(text)


def test_connect_to_nothing_says_how_to_start_a_scheduler(monkeypatch):
    monkeypatch.setattr("skfastflow.parallel.CONNECT_TIMEOUT", 1)
    with pytest.raises(ValueError, match=r"no dask scheduler answers at 'tcp://127.0.0.1:9'.*dask worker"):
        with connect("tcp://127.0.0.1:9"):
            pass


def test_local_workers_that_do_not_start_point_at_the_main_guard(monkeypatch):
    def failing_cluster(**kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr("skfastflow.parallel.LocalCluster", failing_cluster)
    with pytest.raises(RuntimeError, match=r"'local:3' did not start.*if __name__ == \"__main__\":"):
        with connect("local:3"):
            pass


def test_connect_to_a_scheduler_without_workers_says_how_to_start_them(monkeypatch):
    from distributed import LocalCluster

    monkeypatch.setattr("skfastflow.parallel.CONNECT_TIMEOUT", 1)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        with pytest.raises(ValueError, match=f"at '{empty.scheduler_address}' has no workers.*dask worker"):
            with connect(empty.scheduler_address):
                pass


def test_connect_to_an_address_sets_torch_threads_on_its_workers():
    from distributed import LocalCluster

    # A worker thread inside this process: TorchThreads then acts on this process's torch.
    threads = torch.get_num_threads()
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
            with connect(cluster.scheduler_address, threads_per_task=3) as client:
                assert client.run(torch.get_num_threads) == {address: 3 for address in client.scheduler_info()["workers"]}
    finally:
        torch.set_num_threads(threads)


def test_threads_per_task_must_be_a_positive_whole_number():
    with pytest.raises(ValueError, match="positive whole number"):
        TorchThreads(0)
    with pytest.raises(ValueError, match="positive whole number"):
        TorchThreads(1.5)


# ---------------------------------------------------------------------------- the workers


def test_workers_are_fresh_processes_whose_torch_uses_their_thread_count(client):
    nthreads = client.run(lambda dask_worker: dask_worker.state.nthreads)
    torch_threads = client.run(torch.get_num_threads)
    assert len(nthreads) == 2 and set(nthreads.values()) == {1}
    # Torch's default here would be 2 threads or more (see the fixture); TorchThreads set
    # it to the worker's one thread.
    assert torch_threads == nthreads
    # Spawned, not forked (which the configuration asked for): a worker holds none of this
    # process's modules, so none of its running torch threads' state either.
    assert client.run(lambda: FORK_SENTINEL in sys.modules) == dict.fromkeys(nthreads, False)
    assert len(set(client.run(os.getpid).values()) | {os.getpid()}) == 3


def _mmapped_bytes_of_a_new_1mib_block() -> int:
    """How many bytes malloc maps afresh (rather than taking from its heap) for a 1 MiB block."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    before = libc.mallinfo2().hblkhd
    block = np.empty(1 << 20, dtype=np.uint8)
    mapped = libc.mallinfo2().hblkhd - before
    del block
    return int(mapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_workers_reuse_freed_memory_despite_dasks_malloc_setting(client):
    # dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which freezes glibc's mmap threshold
    # at 128 KiB: a 1 MiB block is then mapped afresh (page faults at every use, half speed).
    frozen = subprocess.run(
        [sys.executable, "-c", f"import numpy as np\n{inspect.getsource(_mmapped_bytes_of_a_new_1mib_block)}\nprint(_mmapped_bytes_of_a_new_1mib_block())"],
        env=dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536"), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert int(frozen.stdout) >= 1 << 20
    # The workers of connect() take it from their heap again.
    assert set(client.run(_mmapped_bytes_of_a_new_1mib_block).values()) == {0}


def test_a_fitted_detector_pickles_to_the_size_of_its_weights(good_images):
    # What a cluster ships to each worker: the torch model's float32 weights (backbone
    # included, so that workers need neither the internet nor a weights file) and little else.
    detector = FastFlowDetector(**TINY).fit(good_images)
    weights = sum(tensor.numel() * tensor.element_size() for tensor in detector.model_.state_dict().values())
    weights += detector.map_standardizer_.mean.nbytes + detector.map_standardizer_.scale.nbytes  # two float32 maps
    assert weights < len(pickle.dumps(detector)) < weights + 16 * 1024
    assert len(pickle.dumps(FastFlowDetector(**TINY))) < 2 * 1024  # what a grid search ships per fit


# ---------------------------------------------------------------------------- model selection


def test_grid_search_on_the_cluster_gives_the_serial_results(client, good_images):
    # Unlabelled selection: the test score is the held-out log-likelihood, a float that any
    # difference between the fits would change (an AUROC of 1.0 would hide it).
    def search(n_jobs):
        grid = {"hidden_ratio": [0.5, 1.0]}
        return GridSearchCV(FastFlowDetector(**TINY), grid, cv=KFold(2, shuffle=True, random_state=0), n_jobs=n_jobs).fit(good_images)

    serial = one_torch_thread(search, 1)
    with joblib.parallel_config(backend="dask"):
        on_cluster = one_torch_thread(search, -1)  # the refit runs here, with a worker's thread count
    for key in ["split0_test_score", "split1_test_score", "mean_test_score", "rank_test_score"]:
        np.testing.assert_array_equal(on_cluster.cv_results_[key], serial.cv_results_[key])
    assert len(set(serial.cv_results_["mean_test_score"])) == 2  # the candidates do differ
    assert on_cluster.best_params_ == serial.best_params_
    # refit=True refits the best candidate in this process, on every image.
    np.testing.assert_array_equal(
        on_cluster.best_estimator_.score_samples(good_images), serial.best_estimator_.score_samples(good_images)
    )


def test_cross_val_score_on_the_cluster_gives_the_serial_results(client, good_images):
    folds = KFold(3, shuffle=True, random_state=0)
    serial = one_torch_thread(cross_val_score, FastFlowDetector(**TINY), good_images, cv=folds)
    with joblib.parallel_config(backend="dask"):
        on_cluster = cross_val_score(FastFlowDetector(**TINY), good_images, cv=folds, n_jobs=-1)
    np.testing.assert_array_equal(on_cluster, serial)


# ---------------------------------------------------------------------------- many product types


def write_images(folder, images):
    folder.mkdir(parents=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(folder / f"{index:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def test_fit_each_fits_one_detector_per_set_and_reports_a_bad_set(client, tmp_path):
    sets = {
        name: write_images(tmp_path / name, make_defect_images(6, image_size=SIZE, defect_fraction=0.0, random_state=seed).images)
        for seed, name in enumerate(["bottle", "cable"])
    }
    (tmp_path / "broken.png").write_bytes(b"not an image")
    sets["broken"] = [sets["bottle"][0], str(tmp_path / "broken.png")]

    results = {result.name: result for result in fit_each(FastFlowDetector(**TINY), sets, client)}

    assert sorted(results) == ["bottle", "broken", "cable"]
    assert results["broken"].detector is None and isinstance(results["broken"].error, ValueError)
    assert "broken.png" in str(results["broken"].error)
    for name in ["bottle", "cable"]:
        assert results[name].error is None
        # The very model a fit in this process gives: the workers changed nothing.
        by_hand = one_torch_thread(FastFlowDetector(**TINY).fit, sets[name])
        np.testing.assert_array_equal(results[name].detector.score_samples(sets["bottle"]), by_hand.score_samples(sets["bottle"]))
        assert results[name].detector.offset_ == by_hand.offset_
    assert results["bottle"].detector.offset_ != results["cable"].detector.offset_


# ---------------------------------------------------------------------------- batch scoring


class RecordedFuture:
    """A finished future that counts, in ``in_flight``, the futures submitted and not yet read."""

    def __init__(self, value, in_flight):
        self.value, self.in_flight, self.cancelled = value, in_flight, False
        in_flight.append(self)

    def result(self):
        self.in_flight.remove(self)
        return self.value

    def cancel(self):
        self.cancelled = True


@given(st.lists(st.integers(), max_size=40), st.integers(1, 8), st.data())
def test_in_order_reads_results_in_order_with_a_bounded_number_in_flight(items, max_in_flight, data):
    in_flight, most, submitted = [], [0], []

    def submit(item):
        submitted.append(RecordedFuture(item, in_flight))
        most[0] = max(most[0], len(in_flight))
        return submitted[-1]

    stop = data.draw(st.integers(0, len(items)), label="results read before stopping")
    results = _in_order(submit, iter(items), max_in_flight)
    assert [next(results) for _ in range(stop)] == items[:stop]
    results.close()
    assert most[0] <= max_in_flight
    # Stopping early cancels what was submitted and not read; nothing read was cancelled.
    assert [future.cancelled for future in submitted] == [position >= stop for position in range(len(submitted))]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A detector fitted on grey images, and files to score: grey ones, a colour one, a corrupt one."""
    folder = tmp_path_factory.mktemp("images")
    grey = make_defect_images(17, image_size=SIZE, defect_fraction=0.5, random_state=3).images.mean(axis=-1).astype(np.uint8)
    paths = write_images(folder / "grey", grey[8:])
    colour = write_images(folder / "colour", make_defect_images(1, image_size=SIZE, random_state=4).images)[0]
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # Not in sorted order, so that the order kept is the order given.
    paths = paths[5:] + [str(folder / "corrupt.png")] + paths[:5] + [colour]
    detector = FastFlowDetector(**TINY).fit(grey[:8])
    return detector, paths


def install_unpickle_counter(client):
    """Count, in each worker, the FastFlowDetectors unpickled there."""

    def install():
        from skfastflow.detector import FastFlowDetector

        original = FastFlowDetector.__setstate__

        def counting(self, state):
            FastFlowDetector.unpickled = getattr(FastFlowDetector, "unpickled", 0) + 1
            original(self, state)

        counting.original = original
        FastFlowDetector.__setstate__ = counting

    def read_and_remove():
        from skfastflow.detector import FastFlowDetector

        FastFlowDetector.__setstate__ = FastFlowDetector.__setstate__.original
        return vars(FastFlowDetector).get("unpickled", 0)

    client.run(install)
    return read_and_remove


def test_scoring_on_the_cluster_gives_score_files_results_in_order(client, image_files):
    detector, paths = image_files
    with pytest.warns(ImageWarning, match="colour") as here:
        expected = one_torch_thread(lambda: list(score_files(detector, paths, return_maps=True)))
    counter = install_unpickle_counter(client)
    try:
        with pytest.warns(ImageWarning, match="colour") as there:
            results = list(score_files_on_cluster(detector, paths, client, return_maps=True))
    finally:
        unpickled = client.run(counter)

    assert [result.path for result in results] == paths
    assert [(result.verdict, result.error) for result in results] == [(result.verdict, result.error) for result in expected]
    corrupt = paths.index(next(path for path in paths if path.endswith("corrupt.png")))
    assert results[corrupt].verdict == "error" and "corrupt.png" in results[corrupt].error
    assert [result.verdict for result in results].count("error") == 1
    np.testing.assert_array_equal([result.score for result in results], [result.score for result in expected])
    for result, reference in zip(results, expected):
        np.testing.assert_array_equal(result.anomaly_map, reference.anomaly_map)
    # The workers' warning about the colour image comes back here, naming the file.
    assert [str(warning.message) for warning in there] == [str(warning.message) for warning in here]
    assert paths[-1] in str(there[0].message)
    # Four chunks (batches of 4), one detector per worker: sent once to each, not with each chunk.
    assert unpickled == dict.fromkeys(unpickled, 1)


def test_scoring_on_the_cluster_reads_the_model_file_here_and_relative_paths_from_here(client, image_files, tmp_path):
    detector, paths = image_files
    save_model(detector, tmp_path / "model.joblib")
    relative = [os.path.relpath(path) for path in paths[:3]]
    # A worker's working directory is its own: relative paths must still mean what they mean here.
    directories = client.run(os.getcwd)
    elsewhere = tmp_path / "elsewhere" / "deeper" / "still"
    elsewhere.mkdir(parents=True)
    client.run(os.chdir, str(elsewhere))
    try:
        results = list(score_files_on_cluster(str(tmp_path / "model.joblib"), relative, client, max_in_flight=1))
    finally:
        for address, directory in directories.items():
            client.run(os.chdir, directory, workers=[address])
    assert [result.path for result in results] == relative
    np.testing.assert_array_equal([result.score for result in results], one_torch_thread(detector.score_samples, paths[:3]))


def test_scoring_on_the_cluster_checks_its_arguments(client, image_files):
    detector, paths = image_files
    for wrong in [{"batches_per_task": 0}, {"max_in_flight": 0}, {"batches_per_task": 2.5}]:
        with pytest.raises(ValueError, match="must be a positive integer"):
            next(score_files_on_cluster(detector, paths, client, **wrong))
    with pytest.raises(TypeError, match="single path"):
        next(score_files_on_cluster(detector, paths[0], client))


# ---------------------------------------------------------------------------- command line


def test_fit_over_several_folders_saves_one_model_each_and_names_a_failed_one(client, tmp_path, capsys):
    folders = []
    for seed, name in enumerate(["bottle", "cable"]):
        folders.append(tmp_path / "data" / name)
        write_images(folders[-1], make_defect_images(6, image_size=SIZE, defect_fraction=0.0, random_state=seed).images)
    (tmp_path / "data" / "empty").mkdir()
    folders.append(tmp_path / "data" / "empty")
    tiny = ["--backbone", "test_resnet", "--no-pretrained", "--input-size", str(SIZE), "--epochs", "2", "--seed", "0"]

    status = main(["fit", *map(str, folders), "--out", str(tmp_path / "models"), "--scheduler", client.scheduler.address, *tiny])

    out, err = capsys.readouterr()
    assert status == 2
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["bottle.joblib", "cable.joblib"]
    assert "error: empty: no image files" in err and "1 of 3 models could not be trained (empty" in err
    for name in ["bottle", "cable"]:
        detector = load_model(tmp_path / "models" / f"{name}.joblib")
        assert detector.backbone == "test_resnet" and detector.n_train_samples_ + detector.n_validation_samples_ == 6
        assert f"{name}: model saved to {tmp_path / 'models' / name}.joblib" in out
    # One DATA_DIR on the cluster: --out is the model file, as without --scheduler.
    assert main(["fit", str(folders[0]), "--out", str(tmp_path / "one.joblib"), "--scheduler", client.scheduler.address, *tiny]) == 0
    images = sorted(map(str, folders[0].iterdir()))
    np.testing.assert_array_equal(
        load_model(tmp_path / "one.joblib").score_samples(images), load_model(tmp_path / "models" / "bottle.joblib").score_samples(images)
    )


def test_fit_refuses_two_folders_of_the_same_name_before_training(tmp_path, capsys):
    for parent in ["a", "b"]:
        (tmp_path / parent / "bottle").mkdir(parents=True)
    status = main(["fit", str(tmp_path / "a" / "bottle"), str(tmp_path / "b" / "bottle"), "--no-pretrained"])
    assert status == 2
    assert "both named 'bottle'" in capsys.readouterr().err


def test_predict_on_the_cluster_writes_the_csv_of_predict_here(client, image_files, tmp_path, capsys):
    detector, paths = image_files
    model = save_model(detector, tmp_path / "model.joblib")
    here = main(["predict", str(model), *paths, "--csv", str(tmp_path / "here.csv")])
    there = main(["predict", str(model), *paths, "--csv", str(tmp_path / "there.csv"), "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    # The corrupt file is named and skipped, on the cluster as here; the status says so.
    assert here == there == 2
    assert err.count("skfastflow: error: ") == 2 and "corrupt.png" in err
    assert "Scoring on 2 dask workers (2 threads)" in err
    assert (tmp_path / "there.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert len((tmp_path / "there.csv").read_text().splitlines()) == len(paths) + 1
