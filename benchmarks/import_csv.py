"""Rows/s of ``streamseg produce``'s CSV mapping (reading, typing, event id, JSON), without Kafka.

    .venv/bin/python benchmarks/import_csv.py [--rows N] [--repeats N]

Writes a CSV in the column layout of a public multi-category store export (event_time
"2019-10-01 00:00:00 UTC", event_type, product_id, category_id, category_code, brand, price,
user_id, user_session) and maps it as the README's example does, with ``--ts-format``. Two time
columns: one row per second (every timestamp text new, the strptime cache never hits) and 16
rows per second (about that export's average rate). Prints the median of ``--repeats`` runs with
min and max; nothing is sent anywhere, so this is the ceiling of the file side of an import.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.event_mapping import EventMapping  # noqa: E402
from consumer.produce import file_records  # noqa: E402

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
MAPS = ["ts=event_time", "type=event_type", "amount=price", "category=category_code"]
MAPS += ["item_id=product_id"]
TS_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def store_csv(rows: int, rows_per_second: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    start = datetime(2019, 10, 1, tzinfo=UTC)
    types = ["view"] * 17 + ["cart", "cart", "purchase"]
    lines = [HEADER]
    for i in range(rows):
        when = (start + timedelta(seconds=i // rows_per_second)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"{when} UTC,{rng.choice(types)},{rng.randrange(10**6, 10**8)},2053013552326770905,"
            f"electronics.smartphone,apple,{rng.uniform(1, 999):.2f},"
            f"{rng.randrange(5 * 10**8, 6 * 10**8)},{rng.getrandbits(64):016x}"
        )
    return ("\n".join(lines) + "\n").encode()


def rows_per_second(data: bytes) -> float:
    mapping = EventMapping.from_options(MAPS, ts_format=TS_FORMAT)  # a fresh time cache
    started = time.perf_counter()
    count = sum(1 for _ in file_records(io.BytesIO(data), "csv", mapping))
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per file (200,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per file (3)")
    args = parser.parse_args()
    print("| timestamps | rows/s, median (min-max) |")
    print("| --- | --- |")
    for per_second in (1, 16):
        data = store_csv(args.rows, per_second)
        rates = [rows_per_second(data) for _ in range(args.repeats)]
        print(
            f"| {per_second} row(s) per second | {statistics.median(rates):,.0f} "
            f"({min(rates):,.0f}-{max(rates):,.0f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
