"""Proves the KfpServer fixture works with the real ``kfp.Client``.

Every run below is really executed by ``kfp.local`` behind the loopback server
(see ``kfp_server.py``), so the assertions read artifacts from disk.
"""

import threading
import time

import kfp
import kfp_server_api
import pytest
from kfp import compiler, dsl

from kfp_server import KfpServer  # tests/ is on sys.path (conftest)

pytestmark = pytest.mark.filterwarnings(
    'ignore:This client only works with Kubeflow Pipeline:FutureWarning')


# --------------------------------------------------------------- pipelines
@dsl.component(base_image='python:3.11', install_kfp_package=False)
def make_greeting(name: str, greeting: dsl.Output[dsl.Artifact]) -> int:
    text = f'Hello, {name}!'
    with open(greeting.path, 'w') as f:
        f.write(text)
    return len(text)


@dsl.component(base_image='python:3.11', install_kfp_package=False)
def shout(greeting: dsl.Input[dsl.Artifact], length: int,
          loud: dsl.Output[dsl.Artifact]) -> str:
    with open(greeting.path) as f:
        text = f.read().upper() + f' ({length})'
    with open(loud.path, 'w') as f:
        f.write(text)
    return text


@dsl.pipeline(name='greeting-pipeline')
def greeting_pipeline(name: str = 'world') -> str:
    first = make_greeting(name=name)
    second = shout(greeting=first.outputs['greeting'],
                   length=first.outputs['Output'])
    return second.outputs['Output']


@dsl.component(base_image='python:3.11', install_kfp_package=False)
def boom(name: str):
    raise RuntimeError(f'boom for {name}')


@dsl.pipeline(name='failing-pipeline')
def failing_pipeline(name: str = 'x'):
    broken = boom(name=name)
    make_greeting(name=name).after(broken)


@dsl.component(base_image='python:3.11', install_kfp_package=False)
def sleeper(seconds: float, marker: str):
    import time
    time.sleep(seconds)
    with open(marker, 'w') as f:
        f.write('finished')


@dsl.pipeline(name='sleepy-pipeline')
def sleepy_pipeline(seconds: float = 120.0, marker: str = ''):
    sleeper(seconds=seconds, marker=marker)


@pytest.fixture(scope='module')
def packages(tmp_path_factory):
    out = tmp_path_factory.mktemp('packages')
    paths = {}
    for name, func in [('greeting', greeting_pipeline),
                       ('failing', failing_pipeline),
                       ('sleepy', sleepy_pipeline)]:
        paths[name] = str(out / f'{name}.yaml')
        compiler.Compiler().compile(func, paths[name])
    return paths


@pytest.fixture
def client(kfp_server):
    return kfp.Client(host=kfp_server.url)


def _wait_until(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, 'condition not reached in time'
        time.sleep(0.05)


# ------------------------------------------------------------------- tests
def test_upload_versions_experiment_and_runs(kfp_server, client, packages):
    pipeline = client.upload_pipeline(packages['greeting'],
                                      pipeline_name='greeting',
                                      description='says hello')
    assert pipeline.display_name == 'greeting'
    version2 = client.upload_pipeline_version(packages['greeting'], 'v2',
                                              pipeline_id=pipeline.pipeline_id)
    assert version2.pipeline_id == pipeline.pipeline_id
    assert client.get_pipeline_id('greeting') == pipeline.pipeline_id
    assert client.get_pipeline_id('no-such-pipeline') is None
    assert client.get_pipeline(pipeline.pipeline_id).name == 'greeting'
    versions = client.list_pipeline_versions(pipeline.pipeline_id)
    assert [v.display_name for v in versions.pipeline_versions
           ] == ['greeting', 'v2']
    assert versions.pipeline_versions[1].pipeline_spec['pipelineInfo'][
        'name'] == 'greeting-pipeline'
    # uploading the same name again is rejected like on a real server
    with pytest.raises(kfp_server_api.ApiException) as err:
        client.upload_pipeline(packages['greeting'], pipeline_name='greeting')
    assert err.value.status == 409

    experiment = client.create_experiment('kfmagic-tests')
    assert client.create_experiment('kfmagic-tests').experiment_id == (
        experiment.experiment_id)
    assert client.get_experiment(
        experiment_name='kfmagic-tests').experiment_id == (
            experiment.experiment_id)

    # 1) from a package, overriding the parameter
    result = client.create_run_from_pipeline_package(
        packages['greeting'],
        arguments={'name': 'Kubeflow'},
        run_name='from-package',
        experiment_name='kfmagic-tests')
    run = client.wait_for_run_completion(result.run_id, timeout=60,
                                         sleep_duration=0.2)
    assert run.state == 'SUCCEEDED', kfp_server.run_log(result.run_id)
    assert run.experiment_id == experiment.experiment_id
    assert run.finished_at >= run.created_at
    assert [s.state for s in run.state_history
           ] == ['PENDING', 'RUNNING', 'SUCCEEDED']
    tasks = {t.display_name: t for t in run.run_details.task_details}
    assert set(tasks) == {'make-greeting', 'shout'}
    assert all(t.state == 'SUCCEEDED' for t in tasks.values())
    assert tasks['make-greeting'].end_time <= tasks['shout'].end_time

    loud = kfp_server.artifact_path(result.run_id, 'shout', 'loud')
    assert loud.read_text() == 'HELLO, KUBEFLOW! (16)'
    assert kfp_server.run_outputs(result.run_id) in loud.parents
    assert kfp_server.pipeline_outputs(result.run_id) == {
        'Output': 'HELLO, KUBEFLOW! (16)'
    }
    assert kfp_server.task_outputs(result.run_id)['make-greeting'][
        'Output'] == 16

    # 2) from the uploaded version, via pipeline_version_reference
    run2 = client.run_pipeline(experiment.experiment_id,
                               'from-version',
                               pipeline_id=pipeline.pipeline_id,
                               version_id=version2.pipeline_version_id,
                               params={'name': 'v2'})
    assert run2.state == 'PENDING'
    run2 = client.wait_for_run_completion(run2.run_id, timeout=60,
                                          sleep_duration=0.2)
    assert run2.state == 'SUCCEEDED', kfp_server.run_log(run2.run_id)
    assert run2.pipeline_version_reference.pipeline_version_id == (
        version2.pipeline_version_id)
    assert kfp_server.artifact_path(
        run2.run_id, 'shout', 'loud').read_text() == 'HELLO, V2! (10)'

    runs = client.list_runs(experiment_id=experiment.experiment_id)
    assert runs.total_size == 2
    assert {r.display_name for r in runs.runs} == {'from-package',
                                                   'from-version'}


def test_failing_component_fails_the_run(kfp_server, client, packages):
    result = client.create_run_from_pipeline_package(packages['failing'],
                                                     arguments={'name': 'y'})
    run = client.wait_for_run_completion(result.run_id, timeout=60,
                                         sleep_duration=0.2)
    assert run.state == 'FAILED'
    assert 'boom' in run.error.message
    tasks = {t.display_name: t.state for t in run.run_details.task_details}
    assert tasks == {'boom': 'FAILED'}  # the downstream task never started
    assert 'RuntimeError: boom for y' in kfp_server.run_log(result.run_id)
    # the run landed in the server's "Default" experiment
    assert client.get_experiment(
        experiment_id=run.experiment_id).display_name == 'Default'


def test_bearer_token_is_required(tmp_path, monkeypatch, packages):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setattr(kfp.Client, '_LOCAL_KFP_CONTEXT',
                        str(tmp_path / 'context.json'))
    with KfpServer(root=tmp_path / 'kfp', require_token='abc') as server:
        good = kfp.Client(host=server.url, existing_token='abc')
        experiment = good.create_experiment('secured')
        assert good.list_experiments().experiments[0].experiment_id == (
            experiment.experiment_id)
        method, path, headers = server.requests[-1]
        assert (method, path) == ('GET', '/apis/v2beta1/experiments')
        assert headers['authorization'] == 'Bearer abc'

        anonymous = kfp.Client(host=server.url)  # healthz is exempt
        with pytest.raises(kfp_server_api.ApiException) as err:
            anonymous.list_experiments()
        assert err.value.status == 401
        assert 'Authorization' not in server.requests[-1][2]

        wrong = kfp.Client(host=server.url, existing_token='nope')
        with pytest.raises(kfp_server_api.ApiException) as err:
            wrong.upload_pipeline(packages['greeting'], 'p')
        assert err.value.status == 401
        assert server.pipelines == {}


def test_injected_and_real_errors(kfp_server, client):
    kfp_server.fail_next(r'/experiments$', 403, method='GET')
    with pytest.raises(kfp_server_api.ApiException) as err:
        client.list_experiments()
    assert err.value.status == 403
    assert client.list_experiments().experiments is None  # one-shot

    kfp_server.fail_next(r'/runs/', 500, {'code': 13, 'message': 'kaputt'})
    with pytest.raises(kfp_server_api.ApiException) as err:
        client.get_run('any')
    assert err.value.status == 500 and 'kaputt' in err.value.body

    with pytest.raises(kfp_server_api.ApiException) as err:
        client.get_run('does-not-exist')
    assert err.value.status == 404


def test_stalled_requests_are_held_while_others_are_answered(kfp_server, client):
    import urllib3

    kfp_server.stall_next(r'/experiments$', 1.0, method='GET')
    answered = {}
    lister = threading.Thread(target=lambda: answered.update(
        experiments=client.list_experiments()))
    started = time.time()
    lister.start()
    _wait_until(lambda: kfp_server.stalled == 1)
    assert client.get_kfp_healthz().multi_user is False
    assert 'experiments' not in answered and time.time() - started < 1.0
    lister.join(10)
    assert time.time() - started >= 1.0  # then answered as usual
    assert answered['experiments'].experiments is None

    # until the server stops; the plain client retries an unanswered GET 3 times
    kfp_server.stall_next(r'/experiments$', times=None)
    with pytest.raises(urllib3.exceptions.MaxRetryError, match='timed out'):
        client._experiment_api.experiment_service_list_experiments(
            _request_timeout=(1, 0.25))
    assert kfp_server.stalled == 1 + 4


def test_terminate_cancels_the_run(kfp_server, client, packages, tmp_path):
    marker = tmp_path / 'sleeper-finished'
    result = client.create_run_from_pipeline_package(
        packages['sleepy'],
        # an int for a float input: coerced like the real backend does
        arguments={'seconds': 120, 'marker': str(marker)})

    def sleeper_running():
        details = client.get_run(result.run_id).run_details
        return bool(details and details.task_details and
                    details.task_details[0].state == 'RUNNING')

    _wait_until(sleeper_running)
    started = time.time()
    client.terminate_run(result.run_id)
    assert client.get_run(result.run_id).state == 'CANCELED'
    final = kfp_server.wait_for_run(result.run_id, timeout=20)
    assert time.time() - started < 15  # the execution was really interrupted
    assert final['state'] == 'CANCELED'
    assert [t['state'] for t in final['run_details']['task_details']
           ] == ['CANCELED']
    assert [h['state'] for h in final['state_history']
           ] == ['PENDING', 'RUNNING', 'CANCELED']
    assert not marker.exists()


def test_platform_spec_document_is_ignored(kfp_server, client, tmp_path):
    kubernetes = pytest.importorskip('kfp.kubernetes')

    @dsl.pipeline(name='with-platform-spec')
    def with_secret(name: str = 'k8s'):
        task = make_greeting(name=name)
        kubernetes.use_secret_as_env(task, secret_name='creds',
                                     secret_key_to_env={'token': 'TOKEN'})

    package = str(tmp_path / 'k8s.yaml')
    compiler.Compiler().compile(with_secret, package)
    assert open(package).read().count('\n---\n') == 1  # two YAML documents
    result = client.create_run_from_pipeline_package(package)
    run = client.wait_for_run_completion(result.run_id, timeout=60,
                                         sleep_duration=0.2)
    assert run.state == 'SUCCEEDED', kfp_server.run_log(result.run_id)
    assert 'platform_spec' in run.pipeline_spec  # sent wrapped by kfp.Client
    assert kfp_server.artifact_path(result.run_id, 'make-greeting',
                                    'greeting').read_text() == 'Hello, k8s!'
