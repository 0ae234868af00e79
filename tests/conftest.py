"""Shared fixtures: official-layout SAM checkpoints built with segment_anything's own modules."""

from __future__ import annotations

import logging
import os
from functools import partial

import pytest
import torch
# segment_anything's classes as the jobs import them (its package's __init__ deferred)
from samadapter.modeling.sam_modules import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling import Sam
from torch import nn

from samadapter.modeling import arch_config

# Keep tests light on the 2-core machines: under pytest-xdist (-n 2) one torch thread a
# process, as two processes with two threads each would have four on two cores.
UNDER_XDIST = bool(os.environ.get("PYTEST_XDIST_WORKER"))  # set in each xdist worker before conftest loads
torch.set_num_threads(1 if UNDER_XDIST else min(2, os.cpu_count() or 1))
# Every Ray node the tests start binds to loopback (Ray otherwise picks the routable IP).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Token authentication for every Ray the tests start or join (read once per process by Ray,
# so it is set before Ray is imported).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Ray Train's controller steps (worker group started, reports, the run's end) wait for its
# next poll of the workers, every 2 s by default: ~6 s of every test run of a few seconds'
# training. Inherited by every Ray the tests start (its controller reads it).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# An idle worker process of the tests' Rays lives a minute (Ray's default: 1 s past its soft
# limit), so the next test's tasks reuse it instead of starting (~2 s of CPU) a new one.
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "60000")
os.environ.setdefault("RAY_num_workers_soft_limit", "8")
# Ray Data 2.60 reads every Parquet dataset's footers on a pool of 32 actors, started for each
# read: 32 processes (~1.3 s of CPU each) to read the footers of the few small files a test
# reads (a ledger, a key list). One, in every Ray the tests start (read where the read is planned).
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
# Ray Train's watcher of spot preemption notices: an actor of its own in every training run,
# for notices a test machine never gets.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def pytest_collection_modifyitems(config, items):
    """The fast tier (``-m "not slow"``) starts no Ray: a test that takes the ``ray_local``
    fixture must be marked slow.

    The order, each part in file order:

    1. the fast tier, so that its failures show in the first minutes (under ``-n 2``, the
       ``alone`` tests come first instead: one process runs them while the other runs the
       fast tier, which may run beside them);
    2. the ``alone`` tests (without ``-n``);
    3. the tests with a Ray cluster of their own (the shared Ray starts after them, not twice);
    4. the longest ``xdist_group`` (the Train runs), then the ``ray start`` head's;
    5. the tests that run a job's driver as a process of its own (``ray_address``), the
       longest of the rest;
    6. the other slow tests.

    With ``--dist loadgroup --no-loadscope-reorder`` (pyproject), xdist hands out work in this
    order: the longest first, the short ones to even out the end."""
    unmarked = [i.nodeid for i in items if {"ray_local", "ray_address", "ray_head"} & set(getattr(i, "fixturenames", ()))
                and not i.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"tests that start Ray without @pytest.mark.slow: {unmarked}")

    def rank(item):
        group = item.get_closest_marker("xdist_group")
        if item.get_closest_marker("alone"):
            return 0 if UNDER_XDIST else 1
        if not item.get_closest_marker("slow"):
            return 1 if UNDER_XDIST else 0
        if "two_gpu_nodes" in getattr(item, "fixturenames", ()):
            return 2
        if group:
            return {"train": 3, "head": 4}.get(group.args[0], 5)
        return 5 if "ray_address" in getattr(item, "fixturenames", ()) else 6  # drivers of their own: the longest

    items.sort(key=rank)  # stable: each part keeps its order


def pytest_configure(config):
    """``-n 2 --dist loadgroup`` needs a pytest whose node ids pytest-xdist 3.8 can mark with
    their group: from pytest 9.2 on it cannot, and the groups are spread over both processes
    without a word (pytest-xdist#1386). Say so instead."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") == "loadgroup":
        import xdist
        from packaging.version import Version  # pytest's own dependency

        if Version(pytest.__version__).release[:2] >= (9, 2) and Version(xdist.__version__).release[:2] <= (3, 8):
            raise pytest.UsageError(f"pytest-xdist {xdist.__version__}'s --dist loadgroup does not group under pytest "
                                    f"{pytest.__version__} (pytest-xdist#1386): pip install 'pytest<9.2' (pyproject's "
                                    f"test extra), or run without -n")


@pytest.fixture(autouse=True)
def _alone_under_xdist(request, tmp_path_factory):
    """Under pytest-xdist (``-n 2``), a test marked ``alone`` runs with no other slow test
    beside it: its assertions are about what Ray's schedulers do, which contention on 2 cores
    changes (tests/test_cluster.py). Every other slow test holds a shared lock while it runs,
    an ``alone`` test the exclusive one; a turnstile taken first keeps the exclusive one from
    waiting for ever behind shared ones. The fast tier (one core, no Ray) takes no lock.
    Without xdist: nothing."""
    if not UNDER_XDIST or request.node.get_closest_marker("slow") is None:
        yield
        return
    import fcntl

    root = tmp_path_factory.getbasetemp().parent  # shared by the run's xdist workers
    alone = request.node.get_closest_marker("alone") is not None
    with open(root / "alone.turnstile", "a") as turnstile, open(root / "alone.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request, monkeypatch):
    """A test of the fast tier that calls ``ray.init`` in this process fails, naming the fix;
    the session's shared Ray (``ray_local``), up when slow tests ran before, looks down to it."""
    if request.node.get_closest_marker("slow") is None:
        import ray

        def refuse(*args, **kwargs):
            raise AssertionError("a test that starts Ray must be marked @pytest.mark.slow")

        monkeypatch.setattr(ray, "init", refuse)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    yield


def official_sam(arch: str = "tiny", seed: int = 123, **overrides) -> Sam:
    """A segment_anything ``Sam`` with the sizes of one of our archs (random weights).

    Built directly from segment_anything's modules, exactly as its ``build_sam`` does, so
    its ``state_dict()`` has the official checkpoint key layout.
    """
    cfg = arch_config(arch, **overrides)
    emb = cfg.img_size // cfg.patch_size
    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            img_size=cfg.img_size,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.out_chans,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.out_chans,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.out_chans,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.out_chans,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    # Random (non-zero) rel-pos tables, so loading them is really checked.
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0, 0.02)
    return sam.eval()


@pytest.fixture
def official_tiny(tmp_path):
    """(path, state_dict) of an official-layout checkpoint of the tiny sizes."""
    sam = official_sam("tiny")
    sd = sam.state_dict()
    path = tmp_path / "sam_tiny.pth"
    torch.save(sd, path)
    return str(path), sd


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on loopback (moto's server) with a bucket ``test-bucket``.

    Sets ``AWS_ENDPOINT_URL`` and dummy credentials in this process's environment, so
    s3fs, pyarrow (through samadapter.storage) and Ray workers started after this
    fixture all reach it.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    # werkzeug's line per request (moto's server is a werkzeug app), formatted and written
    # by this process for every S3 call of the session's Ray workers and jobs
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="test-bucket")
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback (``mlflow server``: a sqlite backend, artifacts
    proxied into a local folder), stopped with the session. Yields its URI."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from .rayheads import free_port

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    # MLflow 3's server would also start its job runner: a process per job kind, each importing
    # mlflow, for server-side jobs the tests never submit
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts")], env=env,
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # ~10 s alone; minutes beside other work on 2 busy cores
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# Set in every worker of the shared Ray: rank 1 of the training run named "faulty" raises
# once, in its second epoch (tests/test_train.py); no other run is touched.
RAY_WORKER_ENV = {"SAMADAPTER_INJECT_FAILURE": "faulty:1:1"}


def own_ray_only():
    """Before a test starts a Ray of its own in this process (a ``Cluster``, a head it
    joins): the shared one is shut down; the next ``ray_local`` test starts it again."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(s3_server):
    """The shared local Ray of the test session (4 logical CPUs, no dashboard), started by
    the first test that asks for it, after moto's S3 server so that its workers inherit the
    endpoint; ``RAY_WORKER_ENV`` in every worker. Shut down at the end of the session, or
    when a test needs a Ray of its own (``own_ray_only``); Ray's start-up (seconds) is
    paid once, not per test file."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": dict(RAY_WORKER_ENV)})
    yield ray


@pytest.fixture
def ray_address(ray_local) -> str:
    """The shared Ray's address: a job run as a subprocess with ``RAY_ADDRESS`` set to it
    joins that Ray (a driver of its own, as under ``ray job submit``) instead of starting one."""
    return ray_local.get_runtime_context().gcs_address


_HEAD = {}


@pytest.fixture
def ray_head():
    """A `ray start --head` of the session's own (``tests/rayheads.py``: loopback, free ports,
    its own temp dir, 4 CPUs), for the tests of the CLI paths that talk to a head: `ray job
    submit`, jobs/nightly.py, a job beside another Ray. Started by the first of them (~10 s);
    stopped by its processes after the last of a run of them (they run one after another:
    the "head" xdist_group, and conftest's order), or with the session. An idle head is not
    free: its dashboard, agents and GCS poll."""
    if "head" not in _HEAD:
        from .rayheads import start_head

        _HEAD["head"] = start_head(num_cpus=4)
    return _HEAD["head"]


def _stop_head() -> None:
    head = _HEAD.pop("head", None)
    if head is not None:
        head.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a run of ``ray_head`` tests, the head stops (a later one
    would start another)."""
    if "ray_head" in getattr(item, "fixturenames", ()) and "ray_head" not in getattr(nextitem, "fixturenames", ()):
        _stop_head()


@pytest.fixture(scope="session", autouse=True)
def _shared_ray_stops_with_the_session():
    yield
    import sys

    _stop_head()
    if "ray" in sys.modules:
        own_ray_only()


def tiny_adapter_and_images(tmp_path, count: int, hw=(40, 50), seed: int = 0):
    """(adapter path, image folder): a tiny 64-px adapter (seeded base) and ``count`` random PNGs."""
    import numpy as np
    from PIL import Image

    from samadapter import build_model

    torch.manual_seed(0)
    adapter = str(tmp_path / "adapter.safetensors")
    build_model("tiny", img_size=64).save_adapter(adapter)
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return adapter, folder
