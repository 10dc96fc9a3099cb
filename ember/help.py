"""What ``ember ... --help`` shows besides the arguments: an example for every command, the
``ember.yaml`` reference of ``ember up``, and the formatter that lays them out."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a description written as one paragraph; keeps the lines of a text that has some
    (the ``ember.yaml`` reference, the examples): those are laid out to be read and copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def ember_version() -> str:
    try:
        return version("ember")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


# by command path ("cache push"): shown under each command's --help
EXAMPLES = {
    "": [
        "ember serve --config examples/mlp/model.yaml",
        "ember up --config examples/ember.yaml",
        "ember deploy --config examples/ember.yaml --dry-run",
    ],
    "serve": [
        "ember serve --config examples/mlp/model.yaml --port 8080",
        "ember serve --config model.yaml --host 0.0.0.0 --log-level debug --access-log",
    ],
    "up": ["ember up --config examples/ember.yaml --port 8080 --log-level info"],
    "deploy": [
        "ember deploy --config examples/ember.yaml --dry-run | kubectl apply -f -",
        "ember deploy --config examples/ember.yaml --namespace staging --timeout 900",
    ],
    "prewarm": [
        "ember prewarm --activator http://ember-activator.ember --model mlp --seconds 1800",
    ],
    "cost-report": ["ember cost-report --events .ember/events.jsonl --format md"],
    "simulate": [
        "ember simulate --trace tests/data/traces/azure2019_sample100 --policy fixed:10m",
        "ember simulate --trace tests/data/traces/azure2019_sample100 --policy tiered "
        "--wake host=0.05 --wake disk=0.15 --cold-start 2.0",
        "ember simulate --trace .ember/events.jsonl --policy hybrid --weight tokens",
    ],
    "status": [
        "ember status --config examples/ember.yaml",
        "ember status --url http://127.0.0.1:8080   # a running ember up",
    ],
    "cache": [
        "ember cache push examples/mlp/weights s3://models/mlp",
        "ember cache pull s3://models/mlp",
    ],
    "cache push": ["ember cache push examples/mlp/weights s3://models/mlp --chunk-mb 8"],
    "cache pull": ["MODEL_DIR=$(ember cache pull s3://models/mlp)   # stdout: the path only"],
    "cache ls": ["ember cache ls s3://models/", "ember cache ls --local"],
    "cache verify": ["ember cache verify s3://models/mlp"],
    "cache evict": ["ember cache evict --all"],
}

UP_REFERENCE = """\
ember.yaml:
  activator:                 (all optional)
    events: .ember/events.jsonl  the event log (the default, beside this file), one JSON line
                             per transition and request; null: no log
    event_log_max_bytes: 64MiB   past it the log is rotated (events.jsonl.1, .2, ...)
    event_log_keep: 4        rotated files kept; the log holds at most (keep + 1) x max_bytes
    keep_alive_s: 60         idle time before a model's replicas drain and stop; this and
                             every other *_s key: seconds, or with units (90s, 10m, 1h30m)
    queue_size: 1000         per model; past it requests get 503 + Retry-After
    deadline_s: 120          how long a request may wait for a replica, then 504
                             (per request: header Ember-Deadline-Ms)
    startup_timeout_s: 5m    a replica not ready by then is stopped; its waiters get 504
    grace_period_s: 30       drain time for stopping replicas and for SIGTERM
    request_timeout_s: 300   a replica holding a request longer: the client gets 504
    admin_token_env: EMBER_ADMIN_TOKEN   bearer token for /admin (without one, /admin is
                             open only when bound to loopback)
    admin_token_file: FILE   admin tokens, one per line (list two to rotate)
    api_token_env: EMBER_API_TOKEN       bearer token for /v2 (but /v2/health) and /metrics;
                             unset: open (a warning at start when not bound to loopback)
    api_token_file: FILE     API tokens, one per line
    max_header_bytes: 65536  request line + headers; past it 431
    max_request_bytes: 67108864  one request body; past it 413 (before it is read)
    max_buffered_bytes: 536870912  request bodies held at once over all connections
                             (queued for a cold model included); past it 503
    header_timeout_s: 10     a request's head must arrive within this; else 408
    body_timeout_s: 30       longest pause while a body arrives; else 408
    idle_timeout_s: 75       a kept-alive connection with no request is closed after this
    cache_dir: DIR           the replicas' local weight tier
    warm_pool: 0             standby `ember serve` interpreters (imports done, no model) that a
                             start takes instead of a new process; ~300 MB each; 0: none
    scaler: local            local: `ember serve` processes here; knative: each model's ksvc,
                             woken through min-scale (see `ember deploy --help`)
    policy: fixed            keep-alive/pre-warm policy: fixed (keep_alive_s), fixed:10m,
                             knative, hybrid (see `ember simulate --help`)
    log_level: info          debug, info, warning or error (--log-level overrides it); the
                             replicas log at it too, each line at its own level
    quiet_replicas: false    true: the replicas' lines at DEBUG only (--quiet-replicas)
  models:
    - config: mlp/model.yaml a runtime model config (relative to ember.yaml)
      min_replicas: 0
      max_replicas: 1
      container_concurrency: 8   requests one replica takes at once
      target: 8              in-flight requests per replica before another starts
      keep_alive_s / policy / queue_size / deadline_s / startup_timeout_s: per-model overrides
  groups:                    several models sharing replicas (each replica serves all of them)
    - name: shared           lowercase letters, digits and '-' (a Knative Service's name too)
      models:                each: config, and optionally keep_alive_s, queue_size, deadline_s
        - config: mlp/model.yaml
        - config: minilm/model.yaml
      min_replicas / max_replicas / container_concurrency / target / keep_alive_s: the group's
      device_memory_budget: 2GiB   each replica's: models past it sleep, a request wakes one
      host_memory_budget: 8GiB     past it, models put away sleep at disk instead of host
      policy: fixed          fixed: awake until the replicas go; tiered: each idle model sleeps
                             at host, then disk, then the replicas go (ember simulate --help)
      wake: {host: 0.05, disk: 0.15}   tiered: wake seconds to assume until measured
      host_hold_s: 20m / disk_hold_s: 1h   tiered: the longest a model sleeps at each level
      (a model served by its command is a group's only model, with its server's sleep: and
       wake: calls in its config: the group sleeps and wakes it through them)
  (pre-warm windows live in each model config: prewarm: [{cron, timezone, duration_s, replicas}])

Before anything starts, ember.yaml and every model config it names are checked as `ember serve`
checks them (handler options included): each problem is one line naming the file and the key.
"""


def finish(parser: argparse.ArgumentParser) -> None:
    """Give every command under ``parser`` the formatter and its examples (after its epilog)."""
    for path, command in [((), parser), *commands(parser, ())]:
        command.formatter_class = HelpFormatter
        lines = EXAMPLES.get(" ".join(path))
        if not lines:
            continue
        heading = "example:" if len(lines) == 1 else "examples:"
        examples = "\n".join([heading, *(f"  {line}" for line in lines)]) + "\n"
        command.epilog = f"{command.epilog.rstrip()}\n\n{examples}" if command.epilog else examples


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of ``parser`` (nested ones too), with its path of names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield (*path, name), command
                yield from commands(command, (*path, name))
