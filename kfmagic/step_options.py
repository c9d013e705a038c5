"""What a step asks of the cluster (`%%step --cpu/--memory/--gpu/...`), checked when the cell runs.

The values reach the compiled pipeline as they are written here; a value the cluster would reject
(or kfp would quietly drop) is an error now, naming the step and the option, so nothing is
accepted and then lost. Pure: no kfp import.
"""

import re

from .errors import CellSyntaxError

STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # a step's name: its records' folder, a Kubeflow task's name

# Kubernetes quantities: CPU "2", "0.5", "500m"; memory "512Mi", "4Gi", "1G", "1000000".
_CPU_RE = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY_RE = re.compile(r"^\d+(\.\d+)?(E|P|T|G|M|K|k|Ei|Pi|Ti|Gi|Mi|Ki)?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DEFAULT_GPU_TYPE = "nvidia.com/gpu"


def check_step_options(step, options):
    """Raise CellSyntaxError for the first option value the cluster could not honour."""

    def fail(option, value, why):
        raise CellSyntaxError(f"%%step {step}: --{option} {value}: {why}")

    cpu, memory = options.get("cpu"), options.get("memory")
    if cpu is not None and not _CPU_RE.match(cpu):
        fail("cpu", cpu, "write CPUs as a number (2, 0.5) or millicores (500m).")
    if memory is not None and not _MEMORY_RE.match(memory):
        fail(
            "memory", memory,
            "write memory as a Kubernetes quantity: a number with a unit Ki, Mi, Gi, Ti (powers of 1024) "
            "or K, M, G, T (powers of 1000), e.g. 512Mi or 4Gi.",
        )
    gpu, gpu_type = options.get("gpu"), options.get("gpu_type")
    if gpu is not None and gpu < 1:
        fail("gpu", gpu, "ask for at least one GPU, or leave --gpu out.")
    if gpu_type is not None and gpu is None:
        fail("gpu-type", gpu_type, "also say how many with --gpu N.")
    retries = options.get("retries")
    if retries is not None and retries < 0:
        fail("retries", retries, "the number of retries is 0 or more.")
    named = set()
    for pair in options.get("env") or ():
        if not _ENV_RE.match(pair):
            fail("env", pair, "write NAME=VALUE with NAME a valid environment variable name, e.g. --env LOG_LEVEL=debug.")
        name = pair.split("=", 1)[0]
        if name in named:
            fail("env", pair, f"{name} is given twice; give it once.")
        named.add(name)
    for text in options.get("secret") or ():
        parts = text.split(":")
        if len(parts) != 3 or not all(parts) or not _ENV_RE.match(parts[2] + "="):
            fail("secret", text, "write SECRET_NAME:KEY:ENV_VAR, e.g. --secret aws-creds:access_key:AWS_ACCESS_KEY_ID.")
    for text in options.get("volume") or ():
        pvc, _, mount = text.partition(":")
        if not _K8S_NAME_RE.match(pvc) or not mount.startswith("/"):
            fail("volume", text, "write PVC_NAME:/absolute/mount/path, e.g. --volume data-pvc:/data.")
    if options.get("display_name") == "":
        fail("display-name", "''", "give a non-empty name.")
    if options.get("packages") and options.get("install") is False:
        fail("packages", " ".join(options["packages"]), "--no-install says the image has everything; drop one of the two.")


def secrets(options):
    """[(secret name, key, env var)] from `--secret NAME:KEY:ENV` values."""
    return [tuple(text.split(":")) for text in options.get("secret") or ()]


def volumes(options):
    """[(pvc name, mount path)] from `--volume PVC:/path` values."""
    return [tuple(text.split(":", 1)) for text in options.get("volume") or ()]


def env(options):
    """{name: value} from `--env NAME=VALUE` values."""
    return dict(pair.split("=", 1) for pair in options.get("env") or ())
