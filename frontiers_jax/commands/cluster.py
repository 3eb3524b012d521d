"""Runs N JAX processes on this machine (CPU), as a multi-host job would run.

  frontiers cluster --num_processes=2 --devices_per_process=2 -- \\
      --config=generalization:tiny --workdir=/tmp/run

Everything after `--` goes to each process of `--program` (default:
`frontiers train`), which also gets `--coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=I`. Output lines are prefixed with the process
id. Exit status: that of the first process to fail (the others are stopped),
124 after `--timeout_s`, 130 or 143 after Ctrl-C or SIGTERM.
"""


from absl import flags

from frontiers_jax import cli

flags.DEFINE_integer('num_processes', 2, 'processes to start')
flags.DEFINE_integer('devices_per_process', 1, 'fake CPU devices in each process')
flags.DEFINE_integer('port', 0, 'coordinator port on 127.0.0.1 (0: a free one)')
flags.DEFINE_float('timeout_s', 3600, 'kill everything and exit 124 after this long')
flags.DEFINE_float('grace_s', 10, 'after Ctrl-C or SIGTERM, seconds before SIGKILL')
flags.DEFINE_string('program', '', 'a Python file each process runs (default: frontiers train)')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  from frontiers_jax import local_cluster
  return local_cluster.run(FLAGS.program, argv[1:], FLAGS.num_processes,
                           FLAGS.devices_per_process, FLAGS.port, FLAGS.timeout_s,
                           FLAGS.grace_s)


def run() -> None:
  cli.main(main)
