import csv
import json
import os
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

from condnet.training.distribute import fit_inputs, resolve

# Runs in a fresh JAX process that sees two (simulated) CPU devices.
TWO_DEVICES = """
import json, sys
import jax, keras, numpy as np
from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.recipe import train

root, out = sys.argv[1], sys.argv[2]
make_shapes_dataset(root, samples_per_class=8, image_size=32, test_samples_per_class=2)
tiny = dict(image_size=32, filters=(8, 8, 8), batch_size=16, augment="none", epochs=2,
            baseline=False, tensorboard=False, verbose=0, routing="hard")
report = {"devices": len(jax.devices())}
for mode, dispatch in [(m, d) for d in ("dense", "capacity") for m in ("none", "data-parallel")]:
    name = f"{mode}-{dispatch}"
    result = train(root + "/train", f"{out}/{name}", distribute=mode, seed=3, dispatch=dispatch,
                   **tiny)
    history = [l.split(",") for l in open(f"{out}/{name}/history.csv").read().splitlines()]
    column = history[0].index("loss")
    report[name] = {"loss": [float(row[column]) for row in history[1:]],
                    "accuracy": result["metrics"]["accuracy"],
                    "capacity": "dropped_rate" in history[0]}
    if name == "data-parallel-dense":
        model = result["model"]
        kernel = model.gate.trainable_variables[0].value
        report["kernel_devices"] = len(kernel.sharding.device_set)
        report["kernel_replicated"] = bool(kernel.sharding.is_fully_replicated)
        layout = keras.distribution.DataParallel(devices=jax.devices()).get_data_layout(
            (16, 32, 32, 3))
        report["batch_axes"] = list(layout.axes)
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution runs on JAX")
def test_a_data_parallel_run_on_two_devices_follows_the_single_device_run(tmp_path):
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    done = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, str(tmp_path / "data"), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT")[-1])
    assert report["devices"] == 2
    assert report["kernel_devices"] == 2 and report["kernel_replicated"]
    assert report["batch_axes"][0] == "batch"  # each batch is split over the devices
    # The same global computation, reduced in another order: the losses agree to float
    # rounding, compounded over two epochs of Adam steps.
    for dispatch in ("dense", "capacity"):  # capacity buffers are sized from the global batch
        single = report[f"none-{dispatch}"]["loss"]
        parallel = report[f"data-parallel-{dispatch}"]["loss"]
        assert parallel == pytest.approx(single, rel=1e-3), dispatch
    assert report["data-parallel-capacity"]["capacity"]  # the dispatch really applied
    assert not report["data-parallel-dense"]["capacity"]


# Runs in a fresh TensorFlow process whose CPU is split into two logical devices.
TWO_LOGICAL_CPUS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from condnet.data.demo_data import make_shapes_dataset
from condnet.runs.recipe import resume, train
from condnet.testing import cats_and_dogs_model, random_data
from condnet.training.distribute import scope

report = {}
x, y = random_data(64)
for mode in ("none", "data-parallel"):  # the same seeded MLPs, the same batches, SGD
    with scope(mode, 16):
        keras.utils.set_random_seed(0)
        model = cats_and_dogs_model(routing="soft")
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    report[mode] = {"loss": history.history["loss"],
                    "weights": [w.tolist() for w in model.get_weights()]}
    if mode == "data-parallel":
        report["variable"] = type(model.gate.trainable_variables[0].value).__name__

root, out = sys.argv[1], sys.argv[2]
make_shapes_dataset(root, samples_per_class=8, image_size=32, test_samples_per_class=2)
tiny = dict(image_size=32, filters=(8, 8, 8), batch_size=16, augment="none",
            tensorboard=False, verbose=0, routing="hard", distribute="data-parallel")
train(root + "/train", out, epochs=1, dispatch="capacity", **tiny)  # per-replica buffers
result = resume(out, epochs=2, verbose=0)  # the checkpoint loads into the strategy again
kernel = result["model"].gate.trainable_variables[0].value
history = [l.split(",") for l in open(out + "/history.csv").read().splitlines()]
report["recipe"] = {
    "epochs": [row[0] for row in history[1:]],
    "loss": [float(row[history[0].index("loss")]) for row in history[1:]],
    "replicas": len(kernel.values),
    "baseline": json.load(open(out + "/metrics.json"))["baseline"]["flat"]["accuracy"],
}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="MirroredStrategy runs on TensorFlow"
)
def test_a_mirrored_run_on_two_logical_cpus_takes_the_single_device_steps(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TWO_LOGICAL_CPUS, str(tmp_path / "data"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT")[-1])
    assert report["variable"] == "MirroredVariable"  # one copy per device
    # Each replica runs half of every batch and their gradients are summed; the loss is
    # divided by the replicas first, so the steps equal one device's (no normalisation
    # layer here, so only float rounding differs). Undivided, every SGD step would be
    # twice as long and the logged loss twice the single-device one. (Soft routing: the
    # masked class term of hard routing averages over each replica's routed-right rows,
    # which differs from the global average by about 1% here.)
    single, mirrored = report["none"], report["data-parallel"]
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    for got, want in zip(mirrored["weights"], single["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The recipe under the strategy (capacity dispatch): mirrored variables, a resumed run,
    # its baseline.
    recipe = report["recipe"]
    assert recipe["replicas"] == 2 and recipe["epochs"] == ["1", "2"]
    assert all(np.isfinite(recipe["loss"])) and 0 <= recipe["baseline"] <= 1


def test_fit_inputs_feed_each_epoch_the_folders_batches_in_its_new_order(tmp_path):
    from condnet.data.demo_data import make_shapes_dataset
    from condnet.data.image_folder import ImageFolder
    from condnet.data.splits import load_folders

    make_shapes_dataset(tmp_path, samples_per_class=6, image_size=16, test_samples_per_class=1)
    options = dict(image_size=16, batch_size=4, validation_split=0.25, seed=1, dtype="uint8")
    train_data, validation = load_folders(tmp_path / "train", **options)
    twin, twin_validation = load_folders(tmp_path / "train", **options)
    x, validation_data, callbacks = fit_inputs(train_data, validation)
    if keras.backend.backend() != "tensorflow":  # Keras's own iterators take the folders
        assert (x, validation_data, callbacks) == (train_data, validation, [])
        return
    orders = []
    for epoch in range(2):
        batches = [[np.asarray(part) for part in batch] for batch in x]
        assert len(batches) == len(twin)
        for batch, index in zip(batches, range(len(twin))):
            for got, want in zip(batch, twin[index], strict=True):
                np.testing.assert_array_equal(got, want)
                assert got.dtype == want.dtype
        orders.append(np.concatenate([batch[1] for batch in batches]))
        for callback in callbacks:
            callback.on_epoch_end(epoch)
        twin.on_epoch_end()
    assert not np.array_equal(*orders)  # the second epoch was shuffled anew
    strict = ImageFolder(
        validation.paths, validation.labels, validation.hierarchy, image_size=16, batch_size=4,
        substitute_unreadable=False,
    )  # fmt: skip
    for folder, pipeline in [
        (twin_validation, validation_data),
        (strict, fit_inputs(strict, None)[0]),
    ]:
        batches = [[np.asarray(part) for part in batch] for batch in pipeline]
        assert len(batches) == len(folder)
        for index, batch in enumerate(batches):
            for got, want in zip(batch, folder[index], strict=True):  # (images, labels, valid)
                np.testing.assert_array_equal(got, want)
                assert got.dtype == want.dtype


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data feeds TensorFlow")
def test_the_tensorflow_pipeline_decodes_as_many_batches_at_once_as_the_folder_has_workers(
    tmp_path, monkeypatch
):
    """tf.data's autotuner is off (with it on, whole epochs ran one batch at a time):
    the map runs `decode_workers` batches at once, each in its own thread. The first
    two decodes wait for each other: they meet only if they run at the same time."""
    from condnet.data import image_folder
    from condnet.data.demo_data import make_shapes_dataset
    from condnet.data.splits import load_folders

    make_shapes_dataset(tmp_path, samples_per_class=8, image_size=16, test_samples_per_class=1)
    train_data, _ = load_folders(tmp_path / "train", image_size=16, batch_size=4, seed=1)
    train_data.decode_workers = 2
    meeting, calls, met, lock = threading.Barrier(2), [0], [], threading.Lock()
    decode_files = image_folder.decode_files

    def meet_then_decode(*arguments):
        with lock:
            calls[0] += 1
            first_two = calls[0] <= 2
        if first_two:
            try:
                meeting.wait(timeout=30)
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
        return decode_files(*arguments)

    monkeypatch.setattr(image_folder, "decode_files", meet_then_decode)
    x, _, _ = fit_inputs(train_data, None)
    assert x.options().autotune.enabled is False
    assert sum(1 for _ in x) == len(train_data) > 2
    assert met == [True, True]


def test_data_parallel_is_refused_where_it_cannot_run():
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="no distribution engine on torch"):
            resolve("data-parallel", 32)
    assert resolve("none", 7) == "none"
    assert resolve("auto", 7) in ("none", "data-parallel")


# One process of a two-process job on 127.0.0.1 (jax.distributed, or TensorFlow's
# MultiWorkerMirroredStrategy through TF_CONFIG). Process 1 refuses any write under the run
# directory (only the chief writes); both record the loss of every epoch they train. In the
# "train" stage process 1 kills itself at the start of the third epoch; the chief goes on.
TWO_PROCESSES = """
import builtins, json, os, sys
process, ports, data, run, stage, backend = sys.argv[1:7]
os.environ["KERAS_BACKEND"] = backend
from condnet.training import distribute
ports = ports.split(",")
if backend == "jax":
    distribute.join_processes(f"127.0.0.1:{ports[0]}", 2, int(process))
else:
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": int(process)}})
    distribute.join_tf_config()
import keras

if process == "1":
    real_open = builtins.open
    def refusing(function):
        def guarded(path, *args, **kwargs):
            mode = args[0] if args and isinstance(args[0], str) else kwargs.get("mode", "r")
            writing = function is not real_open or set(mode) & set("wax")
            if str(path).startswith(run) and writing:
                raise AssertionError(f"process 1 wrote {path}")
            return function(path, *args, **kwargs)
        return guarded
    builtins.open = refusing(builtins.open)
    for name in ("replace", "rename", "mkdir", "unlink", "remove"):
        setattr(os, name, refusing(getattr(os, name)))

from condnet.data.image_folder import ImageFolder
from condnet.runs.recipe import resume, train

decoded = []  # the files this process decodes (before each fit: the first batches' types)
submit = ImageFolder._submit
def counted(self, paths):
    decoded.extend("/".join(str(path).split(os.sep)[-3:]) for path in paths)
    return submit(self, paths)
ImageFolder._submit = counted

losses, engine, first_epoch = [], [], []
class Record(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if not first_epoch:
            first_epoch[:] = sorted(set(decoded))
        losses.append(float(logs["loss"]))
        if backend == "tensorflow":  # the strategy the model trains under, and its variables
            kernel = self.model.gate.trainable_variables[0].value
            import tensorflow as tf
            strategy = self.model.distribute_strategy
            multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            engine[:] = [multi, type(kernel).__name__]
        else:  # the devices of both processes hold each variable
            engine[:] = [len(self.model.gate.trainable_variables[0].value.sharding.device_set)]
class KillOneAtThirdEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            print("REPORT" + json.dumps({"losses": losses, "decoded": first_epoch}), flush=True)
            if process == "1":
                os.kill(os.getpid(), 9)  # kill -9: no clean-up, no shutdown of the job

tiny = dict(image_size=32, filters=(8, 8, 8), batch_size=16, augment="none", seed=3,
            baseline=False, tensorboard=False, verbose=0, routing="hard",
            distribute="data-parallel")
if stage == "train":
    train(data, run, epochs=3, callbacks=[Record(), KillOneAtThirdEpoch()], **tiny)
result = resume(run, break_lock=True, callbacks=[Record()], verbose=0)
metrics = result["metrics"]
print("REPORT" + json.dumps({"losses": losses, "replicas": len(distribute.local_devices()),
                             "engine": engine,
                             "accuracy": None if metrics is None else metrics["accuracy"]}))
"""


def _job(tmp_path, stage, run):
    """Both processes' `(returncode, stdout, stderr)`. In the "train" stage the follower
    kills itself; the chief then waits on it (or fails) and is killed, as a user would."""
    from condnet.testing import free_port

    backend = keras.backend.backend()
    ports = ",".join(str(free_port()) for _ in range(2))
    args = [ports, str(tmp_path / "data" / "train"), str(run), stage, backend]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(i), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        for i in (0, 1)
    ]
    follower = processes[1].communicate(timeout=600)
    try:
        chief = processes[0].communicate(timeout=600 if stage == "resume" else 20)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        chief = processes[0].communicate()
    return [(processes[0].returncode, *chief), (processes[1].returncode, *follower)]


def _errors(reports):
    """The last lines of each process's standard error, for a failed assertion."""
    return "\n".join(f"process {i}: " + err[-1500:] for i, (_, _, err) in enumerate(reports))


def _report(out):
    return json.loads(out.split("REPORT")[-1].splitlines()[0])


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="jobs of several processes: JAX and TensorFlow"
)
def test_a_two_process_job_loses_a_worker_and_resumes_with_one_writer(tmp_path):
    from condnet.data.demo_data import make_shapes_dataset

    make_shapes_dataset(
        tmp_path / "data", samples_per_class=8, image_size=32, test_samples_per_class=2
    )
    run = tmp_path / "run"
    killed = _job(tmp_path, "train", run)
    assert killed[1][0] == -9 and killed[0][0] != 0, _errors(killed)  # the job stopped
    before = [_report(out)["losses"] for _, out, _ in killed]
    assert len(before[0]) == 2 and before[0] == pytest.approx(before[1], rel=1e-6)  # one job
    # each process decoded only its own slice of every batch (training and validation)
    chief_files, follower_files = (set(_report(out)["decoded"]) for _, out, _ in killed)
    assert chief_files and follower_files and not chief_files & follower_files
    files = len(list((tmp_path / "data" / "train").rglob("*.png")))
    assert len(chief_files | follower_files) >= 0.8 * files
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and not (run / "metrics.json").exists()

    resumed = _job(tmp_path, "resume", run)
    assert [code for code, _, _ in resumed] == [0, 0], _errors(resumed)
    chief, follower = (_report(out) for _, out, _ in resumed)
    assert chief["replicas"] == follower["replicas"] == 2  # one device in each process
    if keras.backend.backend() == "tensorflow":
        assert chief["engine"] == [True, "MirroredVariable"]  # MultiWorkerMirroredStrategy
    else:
        assert chief["engine"] == [2]
    assert (
        chief["losses"] == pytest.approx(follower["losses"], rel=1e-6) and len(chief["losses"]) == 1
    )
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    logged = [float(row["loss"]) for row in rows]
    assert logged == pytest.approx(before[0] + chief["losses"], rel=1e-6)
    # the chief alone evaluated and reported; the follower wrote nothing (it would have failed)
    assert follower["accuracy"] is None and 0 <= chief["accuracy"] <= 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] == chief["accuracy"] and (run / "report.md").is_file()


def _tf_config(workers, index=0, kind="worker"):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": kind, "index": index}})


def test_tf_config_counts_workers_and_names_what_is_wrong(monkeypatch):
    from condnet.training.distribute import tf_config_workers

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0
    monkeypatch.setenv("TF_CONFIG", _tf_config(["a:1", "b:2"], 1))
    assert tf_config_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        tf_config_workers()
    monkeypatch.setenv("TF_CONFIG", _tf_config(["a:1", "b:2"], 0, kind="chief"))
    with pytest.raises(ValueError, match="workers only"):
        tf_config_workers()
    monkeypatch.setenv("TF_CONFIG", _tf_config(["a:1", "b:2"], 2))
    with pytest.raises(ValueError, match=r"index must be in 0\.\.1"):
        tf_config_workers()


def test_joining_a_tensorflow_job_is_refused_elsewhere_and_with_one_worker(monkeypatch):
    from condnet.training.distribute import join_tf_config

    if keras.backend.backend() != "tensorflow":
        with pytest.raises(ValueError, match="TF_CONFIG configures TensorFlow jobs"):
            join_tf_config()
        return
    monkeypatch.setenv("TF_CONFIG", _tf_config(["a:1"]))
    with pytest.raises(ValueError, match="at least two workers"):
        join_tf_config()


def test_a_process_of_a_job_refuses_to_train_alone():
    from condnet.training.distribute import Job

    with pytest.raises(ValueError, match="joined a job of 2 processes.*distribute='none'"):
        Job("none", 32, processes=2, index=1)
    with pytest.raises(ValueError, match="joined a job of 2 processes.*distribute='none'"):
        resolve("none", 32, processes=2)


def test_a_job_of_one_process_is_its_own_chief_and_reads_every_batch():
    from condnet.training.distribute import Job

    job = Job()
    assert (job.processes, job.index, job.is_chief, job.distribute) == (1, 0, True, "none")
    assert job.shard("folder") == "folder" and job.shard(None) is None


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="no distribution engine on torch")
def test_a_follower_reads_its_own_slice_and_writes_nothing():
    from condnet.training.distribute import Job

    class Folder:
        def shard(self, index, count):
            return ("slice", index, count)

    job = Job("data-parallel", 32, processes=3, index=2)
    assert not job.is_chief and job.shard(Folder()) == ("slice", 2, 3)
