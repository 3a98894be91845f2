"""The configs in cluster/ are checked as far as a machine without a cloud, a Kubernetes or a GPU can:
the launcher YAML with Ray's own schema and defaults, the RayJob against the fields KubeRay's CRD requires,
the SLURM script with bash and shellcheck, and (opt-in, `slow`) on a private single-node SLURM for real.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jsonschema
import pandas as pd
import pytest
import yaml

import sigray
from sigray.store import DONE, RunStore
from tests.conftest import ROOT, nab_signal
from tests.processes import reap_orphans

CLUSTER = os.path.join(ROOT, "cluster")


def _load(name: str):
    with open(os.path.join(CLUSTER, name)) as f:
        return list(yaml.safe_load_all(f))


def _sigray_run_args(command: str):
    """A `sigray run ...` command line parsed by sigray's own parser (what the CLI would accept)."""
    from sigray.cli import _parser

    words = shlex.split(command)
    assert words[:2] == ["sigray", "run"], command
    return _parser().parse_args(words[1:])


# -- Ray cluster launcher -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher_config() -> dict:
    [config] = _load("ray-cluster.yaml")
    return config


def _ray_schema() -> dict:
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def test_launcher_yaml_passes_rays_own_schema_and_defaults(launcher_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(launcher_config, _ray_schema())
    # What `ray up` does before it calls the cloud: merge Ray's AWS defaults, then validate.
    prepared = prepare_config(copy.deepcopy(launcher_config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    gpu_types = {"gpu_a10g": "g5.xlarge", "gpu_a100x8": "p4d.24xlarge"}
    for name, instance in gpu_types.items():
        assert prepared["available_node_types"][name]["node_config"]["InstanceType"] == instance


def test_the_schema_check_is_not_vacuous(launcher_config):
    misspelt = {**launcher_config, "setup_command": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(misspelt, _ray_schema())


def test_launcher_turns_token_auth_on_everywhere_and_ships_the_token(launcher_config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in launcher_config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert launcher_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("install.sh gpu" in c for c in launcher_config["setup_commands"])


def test_launcher_commands_are_valid_shell(launcher_config):
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands")
    keys += ("head_start_ray_commands", "worker_start_ray_commands")
    for key in keys:
        for command in launcher_config[key]:
            checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert checked.returncode == 0, f"{key}: {command}\n{checked.stderr}"


# -- KubeRay RayJob --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob_docs() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in _load("rayjob.yaml") if doc}


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_rayjob_has_the_fields_kuberay_requires(rayjob_docs):
    # Required by KubeRay's v1 CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml) and its validation
    # (token auth needs rayVersion >= 2.52.0; ttlSecondsAfterFinished needs shutdownAfterJobFinishes).
    job = rayjob_docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert _containers(cluster["headGroupSpec"]["template"])[0]["image"]
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        for field in ("groupName", "minReplicas", "maxReplicas", "template"):
            assert field in group, field
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52, 0)


def test_rayjob_runs_the_installed_ray_version(rayjob_docs):
    import ray

    assert rayjob_docs["RayJob"]["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_rayjob_workers_match_the_gpus_and_every_pod_mounts_the_store(rayjob_docs):
    spec = rayjob_docs["RayJob"]["spec"]
    args = _sigray_run_args(spec["entrypoint"])
    cluster = spec["rayClusterSpec"]
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        [container] = _containers(group["template"])
        per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert per_pod >= 1
        gpus += per_pod * group["replicas"]
    assert args.workers * (args.gpus_per_worker or 1) == gpus  # every GPU gets an engine, none is oversubscribed

    claim = rayjob_docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        claimed = {
            v["name"]
            for v in template["spec"]["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        }
        [mount] = [m for m in _containers(template)[0]["volumeMounts"] if m["name"] in claimed]
        assert args.store.startswith(mount["mountPath"] + "/")


def test_rayjob_gives_sigray_time_to_flush_when_stopped(rayjob_docs):
    runtime_env = yaml.safe_load(rayjob_docs["RayJob"]["spec"]["runtimeEnvYAML"])
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


@pytest.mark.skipif(not os.environ.get("SIGRAY_KUBERAY_CRD"), reason="set SIGRAY_KUBERAY_CRD=ray.io_rayjobs.yaml")
def test_rayjob_validates_against_the_kuberay_crd(rayjob_docs):
    """Opt-in: KubeRay's CRD is not shipped here; point SIGRAY_KUBERAY_CRD at a copy of it."""
    with open(os.environ["SIGRAY_KUBERAY_CRD"]) as f:
        crd = yaml.safe_load(f)
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    jsonschema.Draft7Validator(v1["schema"]["openAPIV3Schema"]).validate(rayjob_docs["RayJob"])


# -- SLURM, image, driver --------------------------------------------------------------------------

SLURM_SCRIPT = os.path.join(CLUSTER, "sigray.slurm")


def test_slurm_script_is_valid_bash_and_requeues_itself_on_term():
    checked = subprocess.run(["bash", "-n", SLURM_SCRIPT], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    with open(SLURM_SCRIPT) as f:
        text = f.read()
    assert re.search(r"^#SBATCH --signal=B:TERM@\d+$", text, re.M)
    assert re.search(r"^#SBATCH --requeue$", text, re.M)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "RAY_AUTH_MODE=token" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_slurm_script_passes_shellcheck():
    checked = subprocess.run(["shellcheck", SLURM_SCRIPT], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_dockerfile_copies_files_that_exist():
    with open(os.path.join(CLUSTER, "Dockerfile")) as f:
        copies = [line.split()[1:-1] for line in f if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert os.path.exists(os.path.join(ROOT, source)), source


def test_example_driver_help_runs():
    shown = subprocess.run(
        [sys.executable, os.path.join(CLUSTER, "driver.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "--store-root" in shown.stdout and "--batch-signals" in shown.stdout


# -- SLURM for real (opt-in) -----------------------------------------------------------------------

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel")
SLURM_MISSING = [b for b in SLURM_BINARIES if shutil.which(b) is None]


@pytest.fixture
def private_slurm(short_tmp):
    """A single-node SLURM of our own (munge, slurmctld, slurmd on private ports and dirs), torn down after.

    Clients reach it through SLURM_CONF in the returned environment; nothing system-wide is touched.
    """
    if SLURM_MISSING:
        pytest.skip(f"SLURM is not installed ({', '.join(SLURM_MISSING)} missing): apt-get install slurmctld slurmd "
                    "slurm-client munge")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("a private slurmd must run as root")
    from tests.test_job_submit import free_port_block

    root = tempfile.mkdtemp(prefix="slurm-", dir=short_tmp)
    for sub in ("munge", "state", "spool", "log"):
        os.makedirs(os.path.join(root, sub), mode=0o700)
    key = os.path.join(root, "munge", "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(os.urandom(1024))
    socket_path = os.path.join(root, "munge", "munge.socket")
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    port = free_port_block(2)
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(
            f"""ClusterName=sigraytest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={port}
SlurmdPort={port + 1}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (120 s by default).
AuthInfo=socket={socket_path},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
MinJobAge=600
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        )
    env = {**os.environ, "SLURM_CONF": conf}
    log = open(os.path.join(root, "log", "daemons.log"), "w")  # closed in the teardown
    daemons = []
    try:
        munge_files = [f"--{name}-file={root}/munge/munged.{name}" for name in ("pid", "seed")]
        daemons.append(
            subprocess.Popen(
                ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                 f"--log-file={root}/log/munged.log", *munge_files],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        for _ in range(50):
            if os.path.exists(socket_path):
                break
            time.sleep(0.1)  # polling interval of an observer, not a race fix
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=log, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen(["slurmd", "-D"], env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while _node_state(env) != "idle":
            assert time.monotonic() < deadline, "the private SLURM never came up; see " + root
            assert all(d.poll() is None for d in daemons), "a SLURM daemon exited; see " + root
            time.sleep(0.5)  # polling interval of an observer, not a race fix
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        log.close()


def _node_state(env: dict) -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()


def _slurm_job(env: dict, job_id: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


@pytest.mark.slow
@pytest.mark.extended
def test_slurm_job_stopped_at_its_time_limit_requeues_itself_until_sigray_is_done(private_slurm, ray_session, tmp_path):
    """sbatch with a 2-minute limit and the TERM 60 s before it: every run flushes and exits 75, the script
    requeues the job, and the last run finishes; no window is ever generated twice.

    slurmctld checks time limits every 30 s, so the TERM comes 30 to 60 s into each run: a shorter limit can
    leave a run no time past Ray's start, and the job requeues without progress until the test's deadline.
    The engine's 5 s batches (28 batches of 4 on two workers: 70 s) make the run longer than any one run
    gets, on a fast machine too (with 3 s batches of 8 a run finished in 56 s, before its TERM), while each
    run still finishes some batches before its TERM, and the two batches a worker holds finish within the
    coordinator's 20 s grace after it (with 10 s batches they did not, and were generated again).
    """
    from sigray.engines.test_double import _digest
    from tests.test_job_submit import free_port_block

    name = "cpu_utilization_asg_misconfiguration"
    shutil.copy(nab_signal(name), tmp_path / f"{name}.csv")
    store, log = str(tmp_path / "store"), str(tmp_path / "generated.log")
    token = tmp_path / "auth_token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {k: v for k, v in private_slurm.items() if not k.startswith(("RAY_", "SIGRAY_"))}
    env.update(SIGRAY_VENV=sys.prefix, RAY_AUTH_TOKEN_PATH=str(token), SIGRAY_RAY_PORT_BASE=str(free_port_block(120)))
    command = ["sbatch", "--parsable", "--time=2", "--signal=B:TERM@60", f"--chdir={tmp_path}"]
    command += [f"--output={tmp_path}/slurm-%j.out", SLURM_SCRIPT, f"{name}.csv", "--store", store]
    command += ["--engine", "test-double", "--engine-option", "delay_s=5", "--engine-option", f"log_path={log}"]
    command += ["--batch-size", "4", "--flush-interval", "1"]
    started = time.monotonic()
    submitted = subprocess.run(command, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 600
        while (job := _slurm_job(env, job_id))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            assert time.monotonic() < deadline, f"job {job_id} still {job['JobState']}"
            time.sleep(2)  # polling interval of an observer, not a race fix
    finally:
        reap_orphans(f"/tmp/sigray-ray-{job_id}")  # the script's RAY_TMPDIR
        shutil.rmtree(f"/tmp/sigray-ray-{job_id}", ignore_errors=True)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    print(f"SLURM job {job_id}: {job['JobState']} after {job['Restarts']} requeues, {time.monotonic() - started:.0f} s")
    assert job["JobState"] == "COMPLETED", output[-4000:]
    requeues = int(job["Restarts"])
    assert requeues >= 1, output[-4000:]
    assert output.count("sigray exited with 75") == requeues == output.count("requeueing job")
    assert output.count("sigray exited with 0") == 1

    status, attempts = RunStore.open(store, read_only=True).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    prompts = RunStore.open(store, read_only=True).read_prompts()
    with open(log) as f:
        generated = [line.split()[0] for line in f]
    assert sorted(generated) == sorted(_digest(p) for p in prompts)  # each window generated exactly once

    reference = sigray.run([nab_signal(name)], str(tmp_path / "ref"), engine="test-double")
    pd.testing.assert_frame_equal(
        sigray.open(store).results().anomalies[name],
        reference.anomalies[name].reset_index(drop=True),
        check_dtype=False,
    )
