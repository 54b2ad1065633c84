"""Render benchmarks/results.json as a markdown table (stdout) and docs/performance.md.

.venv/bin/python benchmarks/render.py [results.json] [docs/performance.md]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _get(R: dict[str, Any], *path: str) -> Any:
    cur: Any = R
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _rate(s: dict[str, float] | None) -> str:
    if not s:
        return "not measured"
    return f"{s['median']:,.0f} (min {s['min']:,.0f}, max {s['max']:,.0f}, n={s['n']})"


def _ms(p: dict[str, float] | None) -> str:
    if not p or not p.get("n"):
        return "not measured"
    return f"p50 {p['p50']:.2f} / p95 {p['p95']:.2f} / p99 {p['p99']:.2f} ms (n={p['n']})"


def _num(v: Any, fmt: str = "{:,.2f}") -> str:
    return "not measured" if v is None else fmt.format(v)


def render_table(R: dict[str, Any]) -> str:
    m = R.get("machine", {})
    e2e = _get(R, "e2e", "records_per_s")
    raw = _get(R, "ceilings", "raw_consume_records_per_s")
    dec = _get(R, "ceilings", "decode_validate_records_per_s")
    wr = _get(R, "ceilings", "redis_write_users_per_s")
    naive = _get(R, "naive", "records_per_s")

    def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
        return f"{a['median'] / b['median']:.2f}x" if a and b else "n/a"

    cfg = R.get("config", {})
    rows = [
        (
            "Machine",
            f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM, "
            f"Python {m.get('python')}",
        ),
        ("Date (UTC)", m.get("date", "")),
        (
            "Load average (1/5/15 min) at start / end (other jobs share the machine)",
            f"{m.get('loadavg_start', '?')} / {m.get('loadavg_end', '?')}",
        ),
        ("Servers", ", ".join(f"{k}: {v}" for k, v in m.get("servers", {}).items())),
        (
            "Input",
            f"{_get(R, 'data', 'records') or 0:,} records, "
            f"{_get(R, 'data', 'distinct_keys') or 0:,} distinct users, "
            f"{cfg.get('repeats')} repeats; {_get(R, 'data', 'generator')}",
        ),
        (
            "**1. End to end**, records/s (topic -> segment record in Redis, in-process "
            "`SegmentPipeline.run`, first batch to last)",
            _rate(e2e),
        ),
        (
            "1. End to end, records per CPU-second of the benchmark process (all threads, "
            "start-up included)",
            _rate(_get(R, "e2e", "records_per_cpu_s")),
        ),
    ]
    if _get(R, "e2e_large"):
        rows.append(
            (
                f"1b. End to end at {R['e2e_large']['users']:,} users "
                f"({R['e2e_large']['distinct_keys']:,} distinct), records/s",
                _rate(_get(R, "e2e_large", "records_per_s")),
            )
        )
    rows += [
        ("2a. Raw consume ceiling (`consume(5000)`, no processing), records/s", _rate(raw)),
        ("2b. Decode + validate alone (`decode_events`, 5k batches), records/s", _rate(dec)),
        (
            "2c. Redis batch write alone (`StateStore.write`, 5k users + records + samples), "
            "users/s",
            _rate(wr),
        ),
        ("Pipeline / raw consume", ratio(e2e, raw)),
        ("Pipeline / decode", ratio(e2e, dec)),
        ("Pipeline / Redis write", ratio(e2e, wr)),
        (
            f"**3. Naive baseline** (per event: decode, GET, update, predict 1 row, SET), "
            f"records/s on {_get(R, 'naive', 'records') or 0:,}",
            _rate(naive),
        ),
        ("Pipeline / naive", ratio(e2e, naive)),
    ]
    lat = R.get("latency", {})
    lat2 = R.get("latency_2_processes", {})
    runs = [("4.", "", k, v) for k, v in lat.items()]
    runs += [("4b.", ", `--processes 2`, 2 partitions", k, v) for k, v in lat2.items()]
    for section, how, key, val in runs:
        if isinstance(val, dict) and "latency_ms" in val:
            rows.append(
                (
                    f"**{section} Produce -> segment record latency**{how} at {int(key):,} "
                    "events/s offered "
                    f"(sent {val['achieved_send_events_per_s']:,.0f}/s; "
                    f"{val['probes_not_seen_within_5s']} of {val['probes']} probes unseen"
                    + _windows(val)
                    + ")",
                    _ms(val["latency_ms"]),
                )
            )
    if lat.get("method"):
        rows.append(("Latency method", lat["method"]))
    rows.append(
        (
            "Lookup: redis-py GET of a segment record (10k lookups, throughput namespace)",
            _ms(R.get("lookup_get_ms")),
        )
    )
    rows.append(("Lookup: same, while idle after latency run", _ms(lat.get("lookup_get_ms"))))
    mem = R.get("memory", {})
    rows += [
        (
            "**5. Consumer peak RSS** (separate `consumer.cli run` process, VmHWM from /proc)",
            _num(mem.get("consumer_peak_rss_mb"), "{:,.1f} MB"),
        ),
        (
            "Redis bytes per user (`MEMORY USAGE` state + segment record, sampled)",
            _num(mem.get("bytes_per_user_state_plus_record"), "{:,.0f} B"),
        ),
        (
            "Redis bytes per user (INFO used_memory delta / users, incl. 200k-row training buffer)",
            _num(mem.get("used_memory_delta_per_distinct_user"), "{:,.0f} B"),
        ),
    ]
    for rss in R.get("consumer_rss_by_users") or []:
        rows.append(
            (
                f"Consumer peak RSS after writing {rss['users']:,} distinct users (separate "
                "`consumer.cli run`, one event per user, VmHWM)",
                _num(rss.get("consumer_peak_rss_mb"), "{:,.1f} MB"),
            )
        )
    if R.get("memory_large"):
        rows.append(
            (
                "Redis bytes per user at large user count (`MEMORY USAGE`)",
                _num(R["memory_large"].get("bytes_per_user_state_plus_record"), "{:,.0f} B"),
            )
        )
    mod = R.get("model", {})
    if mod:
        rows += [
            (
                f"**6. Model** data: {mod['users_with_events']:,} users, {mod['events']:,} events, "
                f"{mod['n_features']} features, K={mod['k']} (= planted types)",
                "",
            ),
            (
                "StreamingSegmenter.partial_fit (5k-row batches), rows/s",
                _rate(mod.get("partial_fit_rows_per_s")),
            ),
            (
                f"SegmentModel.assign on {mod['assign_shape'][0]:,} x "
                f"{mod['assign_shape'][1]}, rows/s",
                _rate(mod.get("assign_rows_per_s")),
            ),
            (
                f"River KMeans learn_one + predict_one ({mod['river_rows_timed']:,} rows), rows/s",
                _rate(mod.get("river_rows_per_s")),
            ),
            (
                "ARI vs planted types: streaming / River / offline KMeans(n_init=10)",
                f"{mod['streaming_ari']:.3f} / {mod['river_ari']:.3f} / "
                f"{mod['offline_kmeans_ari']:.3f}",
            ),
            (
                "Inertia / offline KMeans(n_init=10): streaming / River",
                f"{mod['streaming_inertia_ratio']:.3f} / {mod['river_inertia_ratio']:.3f}",
            ),
            (
                "Planted types as a partition: inertia / offline KMeans's (1 = the types are "
                "k-means clusters)",
                _num(mod.get("planted_partition_inertia_ratio"), "{:.2f}"),
            ),
            (
                "ARI ceiling: a classifier trained on the planted types (cross-validated), all "
                "users / users with >= "
                f"{mod.get('rich_history_min_events', '?')} events "
                f"({_num(mod.get('rich_history_share'), '{:.0%}')} of users)",
                f"{_num(mod.get('planted_ceiling_ari'), '{:.3f}')} / "
                f"{_num(mod.get('planted_ceiling_ari_rich_history'), '{:.3f}')}",
            ),
            (
                "Streaming ARI on the users with that much history",
                _num(mod.get("streaming_ari_rich_history"), "{:.3f}"),
            ),
        ]
    if R.get("e2e_cluster"):
        rows.append(
            (
                "**9. End to end on a 3-master Redis Cluster** (same topic and process as 1; "
                f"all nodes on the same {m.get('cores', '?')} cores), records/s",
                _rate(R["e2e_cluster"].get("records_per_s")),
            )
        )
    rows += _replay_rows(R.get("replay"))
    for g in R.get("goals", []):
        verdict = "not measured" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        v = g["value"]
        rows.append((f"Goal: {g['goal']}", f"{verdict} ({_num(v, '{:,.2f}')})"))
    lines = ["| measurement | value |", "| --- | --- |"]
    for n, res in sorted((R.get("scale") or {}).items()):
        rows.append(
            (
                f"**7. `streamseg run --processes {n}`**, one group, "
                f"{res.get('partitions', '?')}-partition topic, records/s from the group "
                f"settled to 95% of {res.get('records', 0):,} records over "
                f"{res.get('users', 0):,} users ({m.get('cores', '?')} cores shared with broker "
                "and Redis); first batch to last record; slowest 10 s stretch",
                _rate(res.get("records_per_s"))
                + "; "
                + _rate(res.get("first_to_last_records_per_s"))
                + "; "
                + _num(_get(res, "ten_second_windows_records_per_s", "min"), "{:,.0f}"),
            )
        )
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


_REPLAY_VARIANTS = (
    ("unthrottled", "default options"),
    ("unthrottled_nice0", "--nice 0, control"),
    ("max_rate_tenth", "--max-rate"),
)


def _replay_options(r: dict[str, Any], text: str) -> str:
    """How the background replay ran, e.g. ``default options: --nice 10``."""
    options = [f"--nice {r['nice']}"] if r.get("nice") else []
    if r.get("max_rate"):
        options.append(f"--max-rate {r['max_rate']:,.0f}")
    if text.startswith("--"):  # the name is already an option
        return " ".join(options) or text
    return f"{text}: {' '.join(options)}" if options else text


def _replay_rows(rep: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not rep:
        return []
    rows = [
        (
            "**8. Replay** from earliest into a shadow namespace (in-process; reading and "
            "applying, training excluded), records/s",
            _rate(rep.get("replay_records_per_s")),
        )
    ]
    alone = rep.get("live_alone_records_per_s")
    if alone:
        rows.append(
            (
                "Live pipeline alone, records/s (passes interleaved with the ones below, "
                "one per round)",
                _rate(alone),
            )
        )
    for key, text in _REPLAY_VARIANTS:
        r = rep.get(key)
        if not r:
            continue
        share = _num(r.get("live_share_of_alone"), "{:.0%}")
        per_round = r.get("live_share_per_round")
        if per_round:  # shares of the same round's alone pass
            share += " median; rounds " + ", ".join(f"{v:.0%}" for v in per_round)
        rows.append(
            (
                f"Live pipeline while a replay runs ({_replay_options(r, text)}), records/s "
                "(share of its rate alone)",
                f"{r['live_records_per_s']:,.0f} ({share})",
            )
        )
        own_alone, beside = (
            r.get("replay_records_per_s_alone"),
            r.get("replay_records_per_s_beside"),
        )
        if own_alone and beside:
            rows.append(
                (
                    f"The replay's own rate ({_replay_options(r, text)}), records/s: in the 2 s "
                    "before the live pass / during it",
                    f"{_rate(own_alone)} / {_rate(beside)}",
                )
            )
    return rows


def render_markdown(R: dict[str, Any]) -> str:
    m = R.get("machine", {})
    return (
        "# streamseg performance\n\n"
        f"Generated by `make bench` (`benchmarks/run.py`, then `benchmarks/render.py`) on "
        f"{m.get('date', '?')} on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, shared and "
        "noisy machine; Kafka broker, Redis, consumer and load generator all on the same 2 "
        "cores). Rates are medians of repeated runs with min and max; see the Input row for the "
        "event mix.\n\n" + render_table(R) + "\n"
    )


README_START = "<!-- performance:start (generated by benchmarks/render.py) -->"
README_END = "<!-- performance:end -->"


def render_readme_summary(R: dict[str, Any]) -> str:
    """The headline figures for the README, with where and when they were measured."""
    m = R.get("machine", {})
    e2e = _get(R, "e2e", "records_per_s")
    raw = _get(R, "ceilings", "raw_consume_records_per_s")
    naive = _get(R, "naive", "records_per_s")
    lat = R.get("latency", {})
    mem = R.get("memory", {})
    model = R.get("model", {})
    goals = R.get("goals", [])

    def pct(key: str, section: str = "latency") -> str:
        p = ((R.get(section) or {}).get(key) or {}).get("latency_ms") or {}
        return f"p50 {p['p50']:.0f} ms, p99 {p['p99']:.0f} ms" if p.get("n") else "not measured"

    rows = [
        (
            "end to end, topic -> segment record (one pipeline inside the benchmark process)",
            _rate(e2e) + " events/s",
        ),
        ("raw consume ceiling, same topic", _rate(raw) + " records/s"),
        (
            "pipeline / naive per-event baseline",
            f"{e2e['median'] / naive['median']:.1f}x" if e2e and naive else "n/a",
        ),
        ("produce -> record latency at 5k events/s", pct("5000")),
        ("produce -> record latency at 20k events/s", pct("20000")),
        (
            "the same with `streamseg run --processes 2` (2 partitions)",
            pct("20000", "latency_2_processes"),
        ),
        *[
            (
                f"end to end, `streamseg run --processes {n}`",
                _rate(res.get("records_per_s")) + " events/s",
            )
            for n, res in sorted((R.get("scale") or {}).items())
        ],
        (
            "end to end, state on a 3-master Redis Cluster (same cores)",
            _rate(_get(R, "e2e_cluster", "records_per_s")) + " events/s",
        ),
        (
            "replay into a shadow namespace",
            _rate(_get(R, "replay", "replay_records_per_s")) + " /s",
        ),
        *[
            (
                f"live pipeline while a replay runs ({_replay_options(r, text)})",
                _num(r.get("live_share_of_alone"), "{:.0%} of its rate alone"),
            )
            for key, text in _REPLAY_VARIANTS
            if (r := _get(R, "replay", key))
        ],
        ("consumer peak RSS", _num(lat.get("consumer_peak_rss_mb"), "{:,.0f} MB")),
        *[
            (
                f"consumer peak RSS after writing {rss['users']:,} users",
                _num(rss.get("consumer_peak_rss_mb"), "{:,.0f} MB"),
            )
            for rss in R.get("consumer_rss_by_users") or []
        ],
        (
            "Redis bytes per user (state + record)",
            _num(mem.get("bytes_per_user_state_plus_record"), "{:,.0f} B"),
        ),
        (
            "ARI vs planted types: streaming / offline KMeans / River",
            " / ".join(
                _num(model.get(k), "{:.2f}")
                for k in ("streaming_ari", "offline_kmeans_ari", "river_ari")
            ),
        ),
    ]
    unmet = [f"{g['goal']} (measured {_num(g.get('value'))})" for g in goals if not g.get("met")]
    lines = [
        README_START,
        f"Measured by `make bench` on {m.get('date', '?')} on {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores shared with the broker, Redis and the load generator "
        "(medians with min and max). Full table: [docs/performance.md](docs/performance.md).",
        "",
        "| measurement | value |",
        "| --- | --- |",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        ("Goals not met: " + "; ".join(unmet) + ".") if unmet else "All goals met.",
        README_END,
    ]
    return "\n".join(lines)


def update_readme(R: dict[str, Any], readme: Path = ROOT / "README.md") -> bool:
    """Replace the README's generated performance block; False when its markers are missing."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0:
        return False
    readme.write_text(text[:start] + render_readme_summary(R) + text[end + len(README_END) :])
    return True


def _windows(val: dict[str, Any]) -> str:
    """``; 3 windows pooled, p99 per window 40 / 52 / 61 ms`` for a pooled latency result."""
    per = val.get("p99_ms_per_window")
    if not per:
        return ""
    return (
        f"; {len(per)} windows pooled, p99 per window "
        + " / ".join(f"{p:.0f}" for p in per)
        + " ms"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0]) if argv else ROOT / "benchmarks" / "results.json"
    dst = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "performance.md"
    R = json.loads(src.read_text())
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(render_markdown(R))
    print(f"wrote {dst}")
    # Only the repository's own results go into the README (not a smoke test's).
    if not argv and update_readme(R):
        print("updated the performance section of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
