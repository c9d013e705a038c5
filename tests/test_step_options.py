"""`%%step` options for the cluster (kfmagic.step_options): every value Kubernetes takes is accepted
as written, each it would refuse is one message naming step, option and fix, and --secret, --volume
and --env come out as the pairs the compiler applies. (test_bad_input.py has the kernel's view.)"""

import pytest

from kfmagic import step_options
from kfmagic.errors import CellSyntaxError
from kfmagic.syntax import parse_cell


def options(line):
    return parse_cell(f"%%step train {line}\nx = 1").options


@pytest.mark.parametrize("line, given", [
    ("--cpu 2", {"cpu": "2"}), ("--cpu 0.5", {"cpu": "0.5"}), ("--cpu 500m", {"cpu": "500m"}),
    ("--memory 512Mi", {"memory": "512Mi"}), ("--memory 1.5G", {"memory": "1.5G"}),
    ("--memory 1000000", {"memory": "1000000"}), ("--memory 2k", {"memory": "2k"}), ("--memory 1Ei", {"memory": "1Ei"}),
    ("--gpu 1", {"gpu": 1}), ("--gpu 2 --gpu-type amd.com/gpu", {"gpu": 2, "gpu_type": "amd.com/gpu"}),
    ("--retries 0", {"retries": 0}), ("--env A=1 B_2= _c=x=y", {"env": ["A=1", "B_2=", "_c=x=y"]}),
    ("--secret creds:key:AWS_KEY", {"secret": ["creds:key:AWS_KEY"]}),
    ("--volume data-1.pvc:/mnt/data", {"volume": ["data-1.pvc:/mnt/data"]}), ("--volume d:/", {"volume": ["d:/"]}),
    ("--display-name 'Train it'", {"display_name": "Train it"}),
    ("--no-install --image python:3.11", {"install": False, "image": "python:3.11"}),
])
def test_values_the_cluster_takes_are_kept_as_written(line, given):
    found = options(line)
    assert {key: found[key] for key in given} == given
    step_options.check_step_options("train", found)  # checked again (as for every cell of a step): still fine


@pytest.mark.parametrize("line, message", [
    ("--cpu 2.", "--cpu 2.: write CPUs as a number (2, 0.5) or millicores (500m)."),
    ("--cpu 0.5m", "--cpu 0.5m: write CPUs as a number (2, 0.5) or millicores (500m)."),
    ("--cpu m", "--cpu m: write CPUs as a number (2, 0.5) or millicores (500m)."),
    ("--memory 4GB", "--memory 4GB: write memory as a Kubernetes quantity: a number with a unit Ki, Mi, Gi, Ti "
                     "(powers of 1024) or K, M, G, T (powers of 1000), e.g. 512Mi or 4Gi."),
    ("--memory Gi", "--memory Gi: write memory as a Kubernetes quantity"),
    ("--memory 1gi", "--memory 1gi: write memory as a Kubernetes quantity"),
    ("--gpu 0", "--gpu 0: ask for at least one GPU, or leave --gpu out."),
    ("--gpu-type nvidia.com/gpu", "--gpu-type nvidia.com/gpu: also say how many with --gpu N."),
    ("--retries -1", "--retries -1: the number of retries is 0 or more."),
    ("--env 1A=x", "--env 1A=x: write NAME=VALUE with NAME a valid environment variable name, "
                   "e.g. --env LOG_LEVEL=debug."),
    ("--env A-B=1", "--env A-B=1: write NAME=VALUE"),
    ("--env A=1 A=2", "--env A=2: A is given twice; give it once."),
    ("--env URL=a=b URL=c", "--env URL=c: URL is given twice; give it once."),
    ("--secret a:b:c:d", "--secret a:b:c:d: write SECRET_NAME:KEY:ENV_VAR, "
                         "e.g. --secret aws-creds:access_key:AWS_ACCESS_KEY_ID."),
    ("--secret a::C", "--secret a::C: write SECRET_NAME:KEY:ENV_VAR"),
    ("--secret a:b:1C", "--secret a:b:1C: write SECRET_NAME:KEY:ENV_VAR"),
    ("--volume .data:/mnt", "--volume .data:/mnt: write PVC_NAME:/absolute/mount/path, e.g. --volume data-pvc:/data."),
    ("--volume data-:/mnt", "--volume data-:/mnt: write PVC_NAME:/absolute/mount/path"),
    ("--display-name ''", "--display-name '': give a non-empty name."),
    ("--packages numpy pandas --no-install", "--packages numpy pandas: --no-install says the image has everything; "
                                             "drop one of the two."),
])
def test_a_value_the_cluster_would_refuse_is_one_message_naming_step_and_option(line, message):
    with pytest.raises(CellSyntaxError) as caught:
        options(line)
    assert str(caught.value).startswith(f"%%step train: {message}")


def test_secrets_volumes_and_env_become_the_pairs_the_compiler_applies():
    given = options("--secret creds:key:AWS_KEY db:password:DB_PASS --volume data:/mnt/data logs:/var/log:ro "
                    "--env MODE=fast URL=http://x?a=b")
    assert step_options.secrets(given) == [("creds", "key", "AWS_KEY"), ("db", "password", "DB_PASS")]
    assert step_options.volumes(given) == [("data", "/mnt/data"), ("logs", "/var/log:ro")]
    assert step_options.env(given) == {"MODE": "fast", "URL": "http://x?a=b"}
    assert (step_options.secrets({}), step_options.volumes({}), step_options.env({})) == ([], [], {})
