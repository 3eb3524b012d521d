"""What TensorBoard shows of a run: config, figures, resumes; profiler traces.

Event files are read back with tensorboardX's protos (there is no tensorboard
package here) and, like TensorBoard, in file-name order, honouring purge steps.
"""

import glob
import json
import os
import shutil
import struct

import jax
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto import plugin_hparams_pb2

from frontiers_jax import runs
from frontiers_jax.errors import UsageError
from frontiers_jax.training import loop
from conftest import load


def read_events(path):
  """The events of one file: TFRecords of (8-byte length, 4-byte CRC, data,
  4-byte CRC)."""
  with open(path, 'rb') as f:
    data = f.read()
  events, at = [], 0
  while at < len(data):
    length, = struct.unpack('<Q', data[at:at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events


def shown(workdir, purge=True):
  """(step, summary value) of each summary TensorBoard loads from the run.
  A SessionLog START at step p (a purge step) drops what was read before it
  with step >= p."""
  kept = []
  for path in sorted(glob.glob(f'{workdir}/tensorboard/events.out.tfevents.*')):
    for event in read_events(path):
      if purge and event.session_log.status == event_pb2.SessionLog.START:
        kept = [(step, value) for step, value in kept if step < event.step]
      kept += [(event.step, value) for value in event.summary.value]
  return kept


def by_tag(values):
  out = {}
  for step, value in values:
    out.setdefault(value.tag, []).append((step, value))
  return out


def text(value) -> str:
  return value.tensor.string_val[0].decode()


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory, fast_compile):
  """lm.py:tiny (arithmetic: it writes figures/examples.txt), traced over steps 2 and 3."""
  del fast_compile
  workdir = str(tmp_path_factory.mktemp('lm') / 'run')
  runs.train(load('lm.py:tiny', profile_steps='2,4'), workdir)
  return workdir


def test_the_config_goes_to_tensorboard_as_hparams_and_text(lm_run):
  tags = by_tag(shown(lm_run))
  (_, start), = tags['_hparams_/session_start_info']
  assert '_hparams_/experiment' in tags
  content = plugin_hparams_pb2.HParamsPluginData.FromString(
      start.metadata.plugin_data.content)
  hparams = content.session_start_info.hparams
  config = load('lm.py:tiny')
  assert hparams['optim.learning_rate'].number_value == pytest.approx(
      config.optim.learning_rate)
  assert hparams['model.width'].number_value == config.model.width
  assert hparams['data.name'].string_value == 'arithmetic'
  assert hparams['profile_steps'].string_value == '(2, 4)'  # tuples as text
  (step, value), = tags['config']
  body = text(value)
  assert step == 0 and body.startswith('```json\n') and body.endswith('\n```')
  with open(os.path.join(lm_run, 'config.json')) as f:
    assert json.loads(body[len('```json\n'):-len('\n```')]) == json.load(f)


def test_figures_and_text_files_go_to_tensorboard_at_the_last_step(lm_run):
  tags = by_tag(shown(lm_run))
  figures = os.path.join(lm_run, 'figures')
  pngs = glob.glob(f'{figures}/*.png')
  assert pngs and os.path.isfile(f'{figures}/examples.txt')
  for png in pngs:
    (step, value), = tags['figures/' + os.path.basename(png)[:-4]]
    assert step == 12 and value.image.colorspace == 3  # RGB: alpha dropped
    assert value.image.width > 100 and value.image.encoded_image_string[1:4] == b'PNG'
  for path in glob.glob(f'{figures}/*.txt'):
    (step, value), = tags['figures/' + os.path.basename(path)[:-4]]
    with open(path) as f:
      assert step == 12 and text(value) == '```\n' + f.read().rstrip() + '\n```'


def test_a_resumed_run_shows_each_step_once(lm_run, tmp_path):
  """As if killed after step 12 was logged but before its checkpoint: the
  resumed run starts from step 8 and writes steps 9 to 12 again."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(lm_run, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '12'))
  shutil.rmtree(os.path.join(workdir, 'profile'))
  runs.train(load('lm.py:tiny'), workdir)

  def steps_of_each_tag(values):
    return {tag: [step for step, _ in pairs] for tag, pairs in by_tag(values).items()}

  unpurged = steps_of_each_tag(shown(workdir, purge=False))
  assert unpurged['train/loss'] == [3, 6, 9, 12, 9, 12]  # Two writers wrote 9 and 12.
  steps = steps_of_each_tag(shown(workdir))
  assert steps['train/loss'] == [3, 6, 9, 12]
  assert steps['eval/loss'] == [6, 12]
  assert steps['figures/lm_loss'] == steps['figures/examples'] == [12]
  assert steps['config'] == [0]  # Written once, by the fresh run.
  for tag, tag_steps in steps.items():
    assert len(tag_steps) == len(set(tag_steps)), tag
  assert not os.path.exists(os.path.join(workdir, 'profile'))  # Steps 2, 3 not rerun.


def test_profile_steps_write_a_trace_and_stop_it(lm_run, tmp_path):
  assert glob.glob(f'{lm_run}/profile/plugins/profile/*/*.xplane.pb')
  jax.profiler.start_trace(str(tmp_path / 'again'))  # Fails if a trace still runs.
  jax.profiler.stop_trace()


def test_a_failure_inside_the_profile_window_stops_the_trace(tmp_path, monkeypatch,
                                                            fast_compile):
  del fast_compile

  def fail(pending, pending_steps, step):
    raise loop.Diverged(f'step {step}: made up')
  monkeypatch.setattr(loop, '_mean_or_stop', fail)
  workdir = str(tmp_path / 'run')
  with pytest.raises(loop.Diverged, match='step 3'):
    runs.train(load('generalization.py:tiny', profile_steps='2,12'), workdir)
  assert glob.glob(f'{workdir}/profile/plugins/profile/*/*.xplane.pb')
  jax.profiler.start_trace(str(tmp_path / 'again'))
  jax.profiler.stop_trace()


@pytest.mark.parametrize('steps', ['3,2', '1', '-1,2', '1,99', '2,2'])
def test_bad_profile_steps_fail_in_one_line_before_anything_is_written(tmp_path, steps):
  workdir = str(tmp_path / 'run')
  with pytest.raises(UsageError) as error:
    runs.prepare(load('lm.py:tiny', profile_steps=steps), workdir)
  assert error.value.where == 'config.profile_steps'
  assert 'num_steps (12)' in str(error.value) and '\n' not in str(error.value)
  assert not os.path.exists(workdir)
