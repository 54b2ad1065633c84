"""The ``streamseg`` command line: one parser, handlers imported only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer import __version__
from consumer.failures import REPORTED_ERRORS, describe_failure, report_failure
from consumer.settings import DEFAULT_METRICS_PORTS, Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]

_EPILOG = """\
Settings come from --config FILE (TOML or JSON, sections kafka, redis, features, pipeline,
trainer, observability) and STREAMSEG_<SECTION>__<FIELD> environment variables, for example
STREAMSEG_KAFKA__BOOTSTRAP_SERVERS=localhost:9092 or STREAMSEG_REDIS__NAMESPACE=shop1.
Run `streamseg COMMAND --help` for the options of one command.
"""

_GENERATE_EPILOG = """\
Planted user types: loyal_high_spender, bargain_hunter, window_shopper, new_user (first seen
late in the span), churning (silent for the last third), occasional. Records are keyed by user
id, mostly in event-time order, with aliases (product_view, add_to_cart, order_completed, ...),
ISO and epoch-ms timestamps, out-of-order and late events and deliberately malformed records
(the consumer must dead-letter them). Same options and seed give the same bytes.

Examples:
  # 1000 users, 90 days, to the events topic as fast as possible, keeping the truth
  streamseg generate --planted planted.json
  # a small, clean file for a unit of work; nothing sent
  streamseg generate --users 200 --days 14 --valid-only --no-kafka --out events.jsonl
  # a live-looking feed at 500 records/s, event times ending now, where loyal high
  # spenders stop buying halfway (without --end-now the span is a fixed one, in 2024)
  streamseg generate --users 5000 --rate 500 --end-now --drift loyal_high_spender --drift-at 0.5
  # send the same stream again later, byte for byte
  streamseg generate --seed 7 --out run7.jsonl && streamseg produce run7.jsonl --topic replay

JSON lines (--out): one record per line; a line is the record value itself, or, for values
that are not one line of UTF-8 (or whose key is not their user_id), a wrapper
{"_raw_b64": "<base64 value>", "_key_b64": "<base64 key>" | null}.
"""

_PRODUCE_EPILOG = """\
Each line is sent as one record: the line itself as the value, keyed by its user_id (or
--key-field) when it is a JSON object that has one, unkeyed otherwise; lines that are not
JSON are sent too (the consumer dead-letters them). A line {"_raw_b64": ..., "_key_b64": ...}
stands for raw bytes and is sent decoded, so files written by `generate --out` replay exactly.

Examples:
  streamseg produce events.jsonl
  streamseg produce events.jsonl --topic events.replay --rate 2000
  kcat -C -b localhost:9092 -t events -e -q | streamseg produce - --topic events.copy
  streamseg produce orders.jsonl --key-field customer_id

A CSV or TSV file, or any of --map, --default, --ts-format, --ts-unit, maps each row to an
event of the contract instead (keyed by its user_id; --key-field does not apply):
  streamseg produce 2019-Oct.csv --map ts=event_time --map type=event_type \\
      --map amount=price --map category=category_code --map item_id=product_id \\
      --ts-format '%Y-%m-%d %H:%M:%S %Z'
The summary counts the rows the consumer will dead-letter or ignore; exit status 1 when it
will apply none of them (they were sent: check a file with --dry-run first).
"""


_RUN_EPILOG = """\
Reads kafka.events_topic in consumer group kafka.group_id, keeps each user's decayed features
in Redis (namespace redis.namespace), assigns segments with the current model (cold start
until `streamseg train` publishes one), writes segment changes to kafka.segments_topic and
bad records to kafka.dead_letter_topic. Stop with SIGTERM or Ctrl-C: the batch in hand is
finished and committed first.

Key records by user id: exactly-once holds for a user whose events arrive on one partition
(a key other than the user id is dead-lettered as key_mismatch; users of records without a
key that land on several partitions are counted in cross_partition_users and warned about).
Producers must agree on where a key goes: streamseg's hash keys as Kafka's Java producer does
(murmur2; librdkafka clients: partitioner=murmur2_random).

Examples:
  streamseg run                                  # the service: run it next to `train`
  streamseg run --processes 2                    # two consumers of the group, one command
  streamseg run --idle-exit-seconds 10           # a batch job: stop when the topic is drained
  STREAMSEG_REDIS__NAMESPACE=shop2 streamseg run --metrics-port 9118
"""

_TRAIN_EPILOG = """\
Waits for trainer.bootstrap_rows feature rows from the pipeline, bootstraps (k-means++, 10
restarts), then every trainer.update_interval_seconds runs one partial_fit step with
forgetting on at least trainer.update_rows new rows and publishes the next model version;
consumers pick it up within pipeline.model_poll_seconds. One trainer per namespace holds a
lease in Redis; a second one waits and takes over when the first stops.

Examples:
  streamseg train                                # next to `streamseg run`
  streamseg train --once                         # bootstrap or one update, then exit
  streamseg train --once --refit                 # refit now (no other trainer running)
  STREAMSEG_TRAINER__N_CLUSTERS=8 streamseg train
"""

_STATUS_EPILOG = """\
Examples:
  streamseg status
  streamseg --namespace r1 status --json | jq .segments
Exit status 2 when Redis or Kafka does not answer (what Redis holds is printed first
when only Kafka is silent) or the namespace holds no data.
"""

_LOOKUP_EPILOG = """\
Prints each user's stored segment record as one JSON line (the record in the README's
"Reading segments"), or {"user_id": ..., "status": "unknown"} for a user never seen. Exit
status 1 when every user asked is unknown, 2 when nothing was ever written in the namespace
(a misspelt --namespace).

Examples:
  streamseg lookup u-42 u-43
  streamseg lookup --live u-42                   # after a promote: the live namespace
  cut -d, -f1 users.csv | streamseg lookup - > segments.jsonl   # many users, 5,000 per round trip
"""

_AUDIENCE_EPILOG = """\
Writes the stored segment record of every user of the namespace as JSON lines on stdout (the
record of the README's "Reading segments"), or only of the users whose record names one of
the --segment ids or --tier values given: the bulk export a CDP, a campaign tool or a
warehouse loads. A SCAN of the namespace (every master on a Redis Cluster), 1,000 records per
round trip; no point-in-time snapshot (a user moved meanwhile is written as found, and SCAN
can return a key twice while Redis resizes). A summary goes to stderr; exit status 2 when
nothing was ever written in the namespace.

Examples:
  streamseg audience > everyone.jsonl
  streamseg audience --segment 3 --segment 5 > campaign.jsonl
  streamseg audience --tier 1 --live | jq -r .user_id > champions.txt
"""

_DEAD_LETTERS_EPILOG = """\
Reads kafka.dead_letter_topic from its oldest record to its end (no consumer group, nothing
committed) and prints, per reason, how many there are, the first and last one's source
position and detail, and the newest --examples records. --resend sends the selected ones back
to kafka.events_topic, to the partition they came from, with their original key, value and
headers, plus streamseg.resent_from = <topic>[partition]@offset: worth it once a setting
that refused them changed (pipeline.max_event_ahead_seconds for ts_out_of_range,
pipeline.max_payload_bytes for oversize). A dead letter cut to fit is not sent; one still
bad is dead-lettered again; sending twice sends twice. --resend alone selects those two
reasons; naming another with --reason needs --force (no setting changes its verdict).

Examples:
  streamseg dead-letters
  streamseg dead-letters --reason not_json --examples 5
  streamseg dead-letters --reason ts_out_of_range --resend
"""

_SETTINGS_EPILOG = """\
Every setting with the value this command line would run with: defaults, then --config FILE,
then STREAMSEG_<SECTION>__<FIELD> variables, then options such as --namespace. Secrets are
shown as ***: kafka.sasl_password, kafka.extra properties named like secrets (password,
secret, token, credential, .pem, sasl.jaas, oauthbearer), and the user name and password of
redis.url (its host, port and database are kept).

Examples:
  streamseg --config prod.toml settings
  STREAMSEG_TRAINER__N_CLUSTERS=8 streamseg settings | jq .trainer
"""

_EXPLAIN_EPILOG = """\
For support and product teams: the user's stored segment record, their features (business
units, at the namespace's event clock, as the re-score computes them), the nearest segments
with their distances, and a table of features beside the nearest and next-nearest centres,
ordered by how much each decides between the two (its share of the margin; the README's
"Explaining a user's segment" gives the formula). Exit status 1 for a user without state.
The features are computed with the feature settings the namespace's consumers recorded at
start (<ns>:feature-settings); where none are recorded, with this command's (give it the
consumers' --config).

Examples:
  streamseg explain u-42
  streamseg explain u-42 --json | jq .margin_terms     # full precision, for scripts
"""

_FORGET_EPILOG = """\
Erases users for a data-subject request: in the namespace (or, with --all-namespaces, in
every namespace `streamseg namespaces` lists) their state and segment record are deleted,
their segment's size loses them, their rows leave the trainer's buffer; and a tombstone per
user goes to the segments topic (and to each replay's own with --all-namespaces; compacted:
Kafka drops their change events there at the next compaction). Not erased: their events on
the events topic (its retention or your source; a replay brings them back), the dead-letter
topics, copies others made of the segments topic. Run it once their events have stopped: a
batch being applied at that moment may write them again.

Examples:
  streamseg forget u-42
  cut -d, -f1 erasures.csv | streamseg forget --all-namespaces -
"""

_MODEL_EPILOG = """\
Models are versioned JSON in Redis (never pickle); consumers use the current version and
pick a change up within pipeline.model_poll_seconds.

Examples:
  streamseg model list --last 5
  streamseg model show                           # the current version's segments
  streamseg model show --json | jq '.segments[]'  # the same for a script
  streamseg model rollback 7                     # a running trainer continues from v7
  streamseg model export model.json --version 7
  streamseg model import model.json              # published as the next version
  streamseg model refit --wait 60                # the active trainer refits now
  streamseg model rename 3 "VIP"                 # kept through every later version
  streamseg model rename 3 --rule                # the rules' name again
"""

_REPLAY_EPILOG = """\
Reads the events topic's records from --from to --to (Kafka record times) into the shadow
namespace NAME with its own consumer group, trains a model there from scratch on a snapshot
of every user, and scores every user with it; the live namespace is not touched. Segment
changes go to <segments_topic>.replay-NAME, bad records to <dead_letter_topic>.replay-NAME.
Stopped (SIGTERM, Ctrl-C, --max-events), it resumes where it stopped when run again with
the same NAME.

Examples:
  streamseg replay --from earliest --namespace-out r1
  streamseg replay --from 2026-11-01T00:00:00Z --to latest --namespace-out nov --n-clusters 8
  streamseg replay --from earliest --namespace-out r1 --max-rate 5000   # beside a live run
then: streamseg compare r1; streamseg promote r1 (or streamseg drop r1)
"""

_COMPARE_EPILOG = """\
Prints users in both namespaces, the share whose segment differs after matching segments
by centre, the adjusted Rand index between the two assignments, each one's inertia, and the
segments side by side with the profile values that moved by more than 20%.

Examples:
  streamseg compare r1                           # r1 against the live namespace
  streamseg compare r1 --with r2
"""

_PROMOTE_EPILOG = """\
Sets the live pointer (streamseg:live-namespace) in one transaction and remembers the
previous namespace. Lookups with namespace=None or `lookup --live`, and pipelines with
pipeline.follow_live_namespace, follow it at once; `streamseg rollback-namespace` (or
promote --rollback) switches back. Promoting the live namespace changes nothing.

Examples:
  streamseg promote r1
  streamseg rollback-namespace
"""

_REPORT_EPILOG = """\
Reads the namespace's current state from Redis (nothing is written there) and writes
DIR/index.html with PNG figures: a profile table of each segment in business units
(revenue in currency units, recency and tenure in days), a heatmap of the model's centres,
mean net revenue by value tier, a 2-D PCA map of users by segment, segment sizes across
model versions, data-quality counters and feature distributions. Before the first model is
published it shows the counters and feature distributions only.

Examples:
  streamseg report                       # ./streamseg-report/index.html
  streamseg --namespace replay1 report --out /tmp/replay1 --sample 5000
"""

_TUNE_K_EPILOG = """\
Fits a fresh preprocessing (signed log1p on counts and money, median centring,
max(IQR, 1.349 std) scaling) to a
snapshot of users' features, runs k-means for every K in --k-min..--k-max and prints
inertia (always falls with K: look for the elbow), mean silhouette (-1..1, higher is
better) and the Calinski-Harabasz score (higher is better). The recommended K follows
--rule: the highest silhouette (default), the highest Calinski-Harabasz score, or the
elbow of the inertia curve; the line under the table names each rule's pick, since they
often disagree (silhouette tends to favour few segments). Set the K you choose as
trainer.n_clusters (STREAMSEG_TRAINER__N_CLUSTERS).

Example:
  streamseg tune-k --k-min 3 --k-max 10 --sample 10000 --out k.png
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; also used by tests to check commands named in deployments."""
    parser = argparse.ArgumentParser(
        prog="streamseg",
        description="Real-time user value segmentation: Kafka events -> rolling per-user "
        "features in Redis -> MiniBatchKMeans segments, read by any service from Redis.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamseg {__version__}")
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = _command(
        commands,
        "run",
        "consumer.run:run_command",
        "consume events, keep features in Redis and assign segments (the main job)",
        _RUN_EPILOG,
    )
    run.add_argument(
        "--max-events",
        type=_non_negative_int,
        default=0,
        help="stop once this many records are consumed, at the end of that batch, so up to "
        "a batch more (0 = forever)",
    )
    run.add_argument(
        "--idle-exit-seconds",
        type=_non_negative,
        default=0.0,
        help="stop when no record arrived for this long (0 = never); for batch jobs and demos",
    )
    run.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run N consumer processes in the group under this command (default: "
        "pipeline.processes, else 1); SIGTERM stops all, a failed one stops the rest; "
        "--max-events and --idle-exit-seconds apply per process; metrics ports PORT..PORT+N-1",
    )
    _metrics_port_option(run, DEFAULT_METRICS_PORTS["run"])

    train = _command(
        commands,
        "train",
        "consumer.trainer:train_command",
        "keep the model fresh: bootstrap, then partial_fit on recent feature vectors",
        _TRAIN_EPILOG,
    )
    train.add_argument(
        "--once",
        action="store_true",
        help="bootstrap or update once, publish, then exit; without enough data yet, exit "
        "status 1 and a line saying what is missing",
    )
    train.add_argument(
        "--refit",
        action="store_true",
        help="with --once: refit the scaling and the centres on the newest buffered rows now "
        "(ids kept by matching), whatever the rows since the last version; e.g. after a "
        "change of shop or features the trainer has not caught up with",
    )
    train.add_argument(
        "--max-seconds", type=_non_negative, default=0.0, help="exit after this long (0 = never)"
    )
    _metrics_port_option(train, DEFAULT_METRICS_PORTS["train"])

    status = _command(
        commands,
        "status",
        "consumer.status:status_command",
        "print a running deployment's model, segment sizes, counters, group lag and consumers",
        _STATUS_EPILOG,
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument(
        "--check",
        action="store_true",
        help="exit 1 (naming each on stderr) when no consumer has a fresh heartbeat, no "
        "trainer holds the lease, no model is published, or a limit below is passed: for "
        "cron jobs and probes",
    )
    status.add_argument(
        "--max-lag",
        type=_non_negative_int,
        metavar="N",
        help="with --check: the most records a partition may lag (default: lag not checked)",
    )
    status.add_argument(
        "--max-model-age",
        type=_non_negative,
        metavar="SECONDS",
        help="with --check: the oldest the current model may be (default: not checked); a "
        "trainer waiting for trainer.update_rows new rows publishes nothing",
    )
    status.add_argument(
        "--max-event-lag",
        type=_non_negative,
        metavar="SECONDS",
        help="with --check: how far the event clock (latest event time applied) may trail "
        "the wall clock (default: not checked; a live stream's event-time lag)",
    )

    lookup = _command(
        commands,
        "lookup",
        "consumer.lookup:lookup_command",
        "print the segment records of users, as a personalization service reads them",
        _LOOKUP_EPILOG,
    )
    lookup.add_argument(
        "user_ids",
        nargs="+",
        metavar="USER_ID",
        help="user ids as the events carry them; - alone reads them from stdin, one per line",
    )
    lookup.add_argument(
        "--live",
        action="store_true",
        help="read the namespace the live pointer names (after a promote), not redis.namespace",
    )

    audience = _command(
        commands,
        "audience",
        "consumer.audience:audience_command",
        "write the segment records of every user, or of some segments or tiers, as JSON lines",
        _AUDIENCE_EPILOG,
    )
    audience.add_argument(
        "--segment",
        action="append",
        metavar="ID|NAME",
        help="only users whose record names this segment: an id, or a name of the current "
        "model such as 'VIP' (repeatable)",
    )
    audience.add_argument(
        "--tier",
        type=int,
        action="append",
        metavar="N",
        help="only users whose record names this value tier, 1 = best (repeatable)",
    )
    audience.add_argument(
        "--live",
        action="store_true",
        help="read the namespace the live pointer names (after a promote), not redis.namespace",
    )
    audience.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )

    explain = _command(
        commands,
        "explain",
        "consumer.explain:explain_command",
        "print a user's features and why the model puts them in their segment",
        _EXPLAIN_EPILOG,
    )
    explain.add_argument("user_id", metavar="USER_ID", help="a user id as the events carry it")
    explain.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object at full precision instead of the tables",
    )

    forget = _command(
        commands,
        "forget",
        "consumer.forget:forget_command",
        "erase users (a data-subject request): state, record, training rows, change events",
        _FORGET_EPILOG,
    )
    forget.add_argument(
        "user_ids",
        nargs="+",
        metavar="USER_ID",
        help="user ids as the events carry them; - alone reads them from stdin, one per line",
    )
    forget.add_argument(
        "--all-namespaces",
        action="store_true",
        help="also in every other namespace (replays, the live and the previous one)",
    )
    forget.add_argument(
        "--no-tombstones",
        action="store_true",
        help="leave the segments topic alone (e.g. it is not compacted, or Kafka is not here)",
    )

    model = _command(
        commands,
        "model",
        "consumer.model_command:model_command",
        "list, show, roll back, export or import models; rename a segment; ask for a refit",
        _MODEL_EPILOG,
    )
    model_actions = model.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = _action(model_actions, "list", "published versions, newest first (* = current)")
    listing.add_argument(
        "--last",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="list the newest N versions kept (default 20; 0 = all of them, up to "
        "trainer.model_history_versions)",
    )
    show = _action(
        model_actions, "show", "one version's segments: ids, names, tiers, sizes and profiles"
    )
    show.add_argument(
        "version", nargs="?", type=_model_version, help="3 or v3 (default: the current one)"
    )
    show.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (each segment's id, tier, name, whether it was chosen, "
        "and its profile at full precision) instead of the table",
    )
    rollback = _action(
        model_actions,
        "rollback",
        "make an earlier version current (consumers switch within pipeline.model_poll_seconds; "
        "a running trainer continues from it)",
    )
    rollback.add_argument(
        "version", type=_model_version, help="a version `model list` shows (3 or v3)"
    )
    export = _action(model_actions, "export", "write a version's JSON to a file")
    export.add_argument("path", type=Path, help="file to write (the model format's JSON)")
    export.add_argument(
        "--version",
        dest="model_version",
        type=_model_version,
        help="3 or v3 (default: the current one)",
    )
    imp = _action(
        model_actions,
        "import",
        "publish a model JSON file as the next version (checked first: a bad file changes nothing)",
    )
    imp.add_argument(
        "path",
        type=Path,
        help="a model JSON as `model export` writes it; checked before Redis is asked",
    )

    refit = _action(
        model_actions,
        "refit",
        "ask the active trainer to refit the scaling and the centres on the newest rows at its "
        "next step (ids kept by matching), whatever the rows since the last version",
    )
    refit.add_argument(
        "--wait",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the refitted version and name it; exit 1 if none came "
        "(default 0: do not wait)",
    )
    rename = _action(
        model_actions,
        "rename",
        "choose a segment's name: published at once as the next version, and kept with the "
        "segment id through every later version the trainer publishes",
    )
    rename.add_argument(
        "segment", type=_non_negative_int, metavar="SEGMENT_ID", help="an id `model show` lists"
    )
    chosen = rename.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="the new name (1 to 200 characters, unique within the model; quote spaces)",
    )
    chosen.add_argument(
        "--rule",
        action="store_true",
        help="give the segment its rule's name back; the other segments not named by an "
        "operator get their rules' names too, as at the trainer's next publish (README: Your "
        "own names)",
    )

    generate = _command(
        commands,
        "generate",
        "consumer.produce:generate_command",
        "simulate a realistic e-commerce stream with planted user types and send it to Kafka",
    )
    generate.formatter_class = argparse.RawDescriptionHelpFormatter
    generate.epilog = _GENERATE_EPILOG
    shape = generate.add_argument_group("what to simulate")
    shape.add_argument("--users", type=int, metavar="N", help="number of users (default 1000)")
    shape.add_argument("--days", type=float, help="span of event time, days (default 90)")
    shape.add_argument(
        "--start",
        metavar="WHEN",
        help="start of the span: epoch ms or ISO-8601, UTC unless zoned (default 2024-01-01)",
    )
    shape.add_argument(
        "--end-now", action="store_true", help="end the span now instead (not reproducible)"
    )
    shape.add_argument(
        "--seed", type=_seed, metavar="S", help="random seed; same seed, same bytes (default 0)"
    )
    shape.add_argument(
        "--activity",
        type=_positive_number,
        metavar="X",
        help="multiply every session rate by this (default 1)",
    )
    shape.add_argument(
        "--events-per-user",
        type=_positive_number,
        metavar="N",
        help="scale activity so that a user has about N valid events over the span",
    )
    shape.add_argument(
        "--drift",
        metavar="TYPE",
        help="planted type that changes behaviour, e.g. loyal_high_spender (default none; a "
        "wrong name is answered with the list)",
    )
    shape.add_argument(
        "--drift-at", type=float, metavar="FRACTION", help="from this fraction of the span on (0.6)"
    )
    shape.add_argument(
        "--drift-to", metavar="TYPE", help="behave like this type from then (window_shopper)"
    )
    dirt = generate.add_argument_group("how dirty the stream is (shares in [0, 1))")
    dirt.add_argument(
        "--malformed-share", type=float, metavar="SHARE", help="malformed records (0.01)"
    )
    dirt.add_argument(
        "--out-of-order-share", type=float, metavar="SHARE", help="delayed 5 s - 5 min (0.02)"
    )
    dirt.add_argument("--late-share", type=float, metavar="SHARE", help="delayed 1-6 hours (0.002)")
    dirt.add_argument(
        "--alias-share",
        type=float,
        metavar="SHARE",
        help="types as aliases, e.g. add_to_cart (0.2)",
    )
    dirt.add_argument(
        "--iso-ts-share", type=float, metavar="SHARE", help="ts as ISO-8601 strings (0.3)"
    )
    dirt.add_argument(
        "--hostile-id-share",
        type=float,
        metavar="SHARE",
        help="users with unicode/space/{}/: ids (0.01)",
    )
    dirt.add_argument("--valid-only", action="store_true", help="no malformed records at all")
    where = generate.add_argument_group("where it goes")
    where.add_argument(
        "--topic", metavar="NAME", help="destination topic (default: kafka.events_topic)"
    )
    where.add_argument(
        "--rate",
        type=_non_negative,
        default=0.0,
        metavar="R",
        help="records per second at most (0 = no limit)",
    )
    where.add_argument(
        "--out", metavar="FILE.jsonl", help="also write the stream as JSON lines (- = stdout)"
    )
    where.add_argument("--planted", metavar="FILE.json", help="write {user_id: planted type} here")
    where.add_argument("--no-kafka", action="store_true", help="only write --out, send nothing")
    where.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )

    produce = _command(
        commands,
        "produce",
        "consumer.produce:produce_command",
        "send a JSON-lines, CSV or TSV file (or stdin) to a Kafka topic, one record per line",
    )
    produce.formatter_class = argparse.RawDescriptionHelpFormatter
    produce.epilog = _PRODUCE_EPILOG
    produce.add_argument("file", metavar="FILE", help="JSON-lines, CSV or TSV file, or - for stdin")
    produce.add_argument(
        "--topic", metavar="NAME", help="destination topic (default: kafka.events_topic)"
    )
    produce.add_argument(
        "--key-field",
        default="user_id",
        metavar="NAME",
        help="JSON field whose value becomes the record key (default user_id)",
    )
    produce.add_argument(
        "--rate",
        type=_non_negative,
        default=0.0,
        metavar="R",
        help="records per second at most (0 = no limit)",
    )
    produce.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    produce.add_argument(
        "--dry-run",
        action="store_true",
        help="read, map and check every row and print the summary (the rows the consumer "
        "will dead-letter or ignore) without connecting to Kafka or sending anything",
    )
    mapping = produce.add_argument_group(
        "your own export (CSV, TSV or JSON lines with other field names)",
        "Each row or object becomes one contract event: see 'Bringing your own data' in the "
        "README for how values are typed and how a missing event_id is derived.",
    )
    mapping.add_argument(
        "--format",
        choices=["auto", "jsonl", "csv", "tsv"],
        default="auto",
        help="input format (default auto: .csv / .tsv, optionally .gz, by the file name; "
        "JSON lines otherwise and for stdin)",
    )
    mapping.add_argument(
        "--delimiter",
        metavar="CHAR",
        help="column separator of a CSV (default , for csv, tab for tsv), e.g. --delimiter ';'",
    )
    mapping.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help="text encoding of a CSV or TSV (default utf-8), e.g. latin-1, cp1252; bytes it "
        "cannot decode are sent as U+FFFD and the first such line is logged",
    )
    mapping.add_argument(
        "--map",
        action="append",
        metavar="FIELD=SOURCE",
        help="take contract field FIELD from source column or key SOURCE (repeatable), "
        "e.g. --map ts=event_time --map type=event_type --map amount=price",
    )
    mapping.add_argument(
        "--default",
        action="append",
        metavar="FIELD=VALUE",
        help="value of FIELD where the source has none (repeatable), e.g. --default currency=EUR",
    )
    mapping.add_argument(
        "--ts-format",
        metavar="FORMAT",
        help="strptime format of text timestamps, e.g. '%%Y-%%m-%%d %%H:%%M:%%S %%Z'; "
        "a time without a zone is UTC (default: ISO-8601 text passes, digits are epoch)",
    )
    mapping.add_argument(
        "--ts-unit",
        choices=["ms", "s"],
        help="unit of numeric timestamps (default ms; s = epoch seconds)",
    )

    dead = _command(
        commands,
        "dead-letters",
        "consumer.dead_letters:dead_letters_command",
        "count the dead-letter topic's records by reason, show examples, or send them back",
        _DEAD_LETTERS_EPILOG,
    )
    dead.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only this reason (repeatable), e.g. ts_out_of_range, oversize, not_json",
    )
    dead.add_argument(
        "--examples",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="show the newest N records of each reason (default 1; 0 = none)",
    )
    dead.add_argument(
        "--resend",
        action="store_true",
        help="send the selected records back to kafka.events_topic (after fixing the "
        "setting that refused them); only ts_out_of_range and oversize, which a setting "
        "decides, unless --force",
    )
    dead.add_argument(
        "--force",
        action="store_true",
        help="with --resend: also send reasons no setting decides (after an upgrade that "
        "reads them; else they are dead-lettered again)",
    )
    dead.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (counts, first and last, examples; what was sent back) "
        "instead of the text",
    )

    report = _command(
        commands,
        "report",
        "consumer.report:report_command",
        "write an HTML report with figures of the segments, their history and data quality",
    )
    report.formatter_class = argparse.RawDescriptionHelpFormatter
    report.epilog = _REPORT_EPILOG
    report.add_argument(
        "--out",
        type=Path,
        default=Path("streamseg-report"),
        metavar="DIR",
        help="directory for index.html and the PNG figures (default ./streamseg-report/)",
    )
    report.add_argument(
        "--sample",
        type=int,
        default=20000,
        metavar="N",
        help="users read from Redis for profiles, PCA and distributions (default 20000)",
    )

    tune = _command(
        commands,
        "tune-k",
        "consumer.tune_k:tune_k_command",
        "score a range of K (number of segments) on the users in Redis and recommend one",
    )
    tune.formatter_class = argparse.RawDescriptionHelpFormatter
    tune.epilog = _TUNE_K_EPILOG
    tune.add_argument("--k-min", type=int, default=2, metavar="K", help="smallest K (default 2)")
    tune.add_argument("--k-max", type=int, default=12, metavar="K", help="largest K (default 12)")
    tune.add_argument(
        "--sample",
        type=_positive_int,
        default=20000,
        metavar="N",
        help="users read from Redis (default 20000); k-means runs once per K on all of them",
    )
    tune.add_argument(
        "--rule",
        choices=("silhouette", "calinski-harabasz", "elbow"),
        default="silhouette",
        help="how the recommended K is chosen (default silhouette)",
    )
    tune.add_argument(
        "--out",
        type=Path,
        default=Path("tune-k.png"),
        metavar="FILE.png",
        help="where to save the inertia + silhouette plot (default ./tune-k.png)",
    )
    tune.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (scores at full precision, each rule's pick, the plot's "
        "path) instead of the table",
    )
    _add_replay_commands(commands)
    _command(
        commands,
        "settings",
        "consumer.show_settings:settings_command",
        "print the settings in effect (file, environment, options) as JSON, secrets hidden",
        _SETTINGS_EPILOG,
    )

    return parser


def _add_replay_commands(commands: Any) -> None:
    """``replay``, ``compare``, ``promote``, ``rollback-namespace``, ``namespaces``, ``drop``."""
    replay = _command(
        commands,
        "replay",
        "consumer.replay:replay_command",
        "rebuild features from the events topic into a shadow namespace, train and score it",
        _REPLAY_EPILOG,
    )
    replay.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="TIME|earliest",
        help="first Kafka record time: epoch ms or ISO-8601 (UTC unless zoned), or earliest",
    )
    replay.add_argument(
        "--to",
        default="latest",
        metavar="TIME|latest",
        help="stop before this record time; latest = the end of the topic at start (default)",
    )
    replay.add_argument(
        "--namespace-out",
        required=True,
        metavar="NAME",
        help="shadow namespace to build (not the configured or the live one)",
    )
    replay.add_argument(
        "--n-clusters",
        type=_segment_count,
        metavar="K",
        help="segments, 2-64 (default trainer.n_clusters)",
    )
    replay.add_argument("--seed", type=_seed, metavar="S", help="default trainer.seed")
    replay.add_argument(
        "--max-events",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="stop after this many records; run again to resume (default 0 = all)",
    )
    replay.add_argument(
        "--max-rate",
        type=_non_negative,
        default=0.0,
        metavar="EVENTS_PER_S",
        help="cap the replay's reading rate, leaving CPU to a live pipeline on the same "
        "machine (0 = as fast as it goes)",
    )
    replay.add_argument(
        "--nice",
        type=int,
        default=10,
        choices=range(20),
        metavar="N",
        help="raise the replay's niceness by N (0-19; default 10; 0 = unchanged): a replay is "
        "background work, so on cores it shares with a live pipeline it gets the CPU the live "
        "one leaves, and alone it runs at full speed",
    )
    replay.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    compare = _command(
        commands,
        "compare",
        "consumer.compare:compare_command",
        "compare a shadow namespace's segments with the live (or another) namespace",
        _COMPARE_EPILOG,
    )
    compare.add_argument("name", metavar="NAME", help="the namespace to judge, e.g. a replay's")
    compare.add_argument(
        "--with",
        dest="with_",
        default="live",
        metavar="NAMESPACE",
        help="the namespace to compare with (default live: the one the live pointer names, "
        "else redis.namespace)",
    )
    compare.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object at full precision instead of the tables (for a script "
        "that decides on a promote)",
    )
    promote = _command(
        commands,
        "promote",
        "consumer.namespaces:namespace_command",
        "make a namespace live for lookups following streamseg:live-namespace (atomic)",
        _PROMOTE_EPILOG,
    )
    promote.add_argument("name", nargs="?", metavar="NAME", help="the namespace to make live")
    promote.add_argument(
        "--rollback", action="store_true", help="switch back to the previous namespace"
    )
    _command(
        commands,
        "rollback-namespace",
        "consumer.namespaces:namespace_command",
        "switch the live namespace back to the one before the last promote",
    )
    _command(
        commands,
        "namespaces",
        "consumer.namespaces:namespace_command",
        "list namespaces with user counts and model versions (* = live)",
    )
    drop = _command(
        commands,
        "drop",
        "consumer.namespaces:namespace_command",
        "delete every key of a namespace (refuses the live and the configured one)",
    )
    drop.add_argument(
        "name",
        metavar="NAME",
        help="the namespace to delete (a replay's shadow, say; `streamseg namespaces` lists them)",
    )


def _whole_number(low: int, high: int | None, rule: str) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high`` (no upper bound for None); the
    error names the bad value and ``rule``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} must be {rule}")
        return value

    return parse


def _real_number(accepts: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type: a number that ``accepts`` (NaN never does: comparisons with it are
    false); the error names the bad value and ``rule``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if math.isnan(value) or not accepts(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {rule}")
        return value

    return parse


_non_negative_int = _whole_number(0, None, ">= 0")
_positive_int = _whole_number(1, None, ">= 1")
_port = _whole_number(0, 65535, "0-65535")
# What numpy and scikit-learn take as a seed.
_seed = _whole_number(0, 2**32 - 1, "0..4294967295")
# As trainer.n_clusters.
_segment_count = _whole_number(2, 64, "2-64")
_non_negative = _real_number(lambda v: v >= 0, ">= 0")
_positive_number = _real_number(lambda v: 0 < v < math.inf, "a finite number > 0")


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--config, --namespace, --log-level, --log-format: on ``streamseg`` itself (with their
    defaults) and again on every command, without defaults, so that ``streamseg lookup
    --namespace shop u1`` works as well as ``streamseg --namespace shop lookup u1``."""

    def default(value: str | None) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config", type=Path, default=default(None), help="settings file (TOML or JSON)"
    )
    parser.add_argument(
        "--namespace",
        default=default(None),
        help="Redis key namespace to use (overrides redis.namespace)",
    )
    parser.add_argument(
        "--log-level",
        default=default("INFO"),
        type=str.upper,  # --log-level info works too
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe log lines shown (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        default=default("text"),
        choices=["text", "json"],
        help="log lines as text or as one JSON object per line (default text)",
    )


def _command(
    commands: Any, name: str, handler: str, help_text: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(sub, defaults=False)
    sub.set_defaults(handler=handler)
    return sub


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A ``model`` action whose ``--help`` says what it does, as the commands' do."""
    sub: argparse.ArgumentParser = actions.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
    )
    _add_global_options(sub, defaults=False)
    return sub


def _model_version(text: str) -> int:
    """A model version as `model list` prints it (``v3``) or as a number (``3``)."""
    try:
        version = int(text.removeprefix("v"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a model version: {text!r} (e.g. 3 or v3)") from None
    if version < 1:
        raise argparse.ArgumentTypeError(f"model versions start at 1, got {text!r}")
    return version


def _metrics_port_option(command: argparse.ArgumentParser, default: int) -> None:
    command.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (0 = off; default: "
        f"observability.metrics_port, else {default})",
    )


def _resolve(handler: str) -> Handler:
    module_name, _, function = handler.partition(":")
    found: Handler = getattr(importlib.import_module(module_name), function)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamseg`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from consumer.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        overrides: dict[str, Any] = {"redis.namespace": args.namespace} if args.namespace else {}
        if getattr(args, "processes", None) is not None:
            overrides["pipeline.processes"] = args.processes  # validated like the setting
        settings = load_settings(args.config, **overrides)
        return _resolve(args.handler)(args, settings)
    except BrokenPipeError:
        # The reader went away (`streamseg model list | head`): not an error to report. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except REPORTED_ERRORS as exc:
        return report_failure(args, describe_failure(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
