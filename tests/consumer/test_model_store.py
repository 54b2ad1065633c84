"""The model history: a publish keeps the newest ``trainer.model_history_versions`` versions,
deleting the older ones in its own transaction; rollback to a pruned version says why not."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from consumer.cli import main
from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore
from consumer.redis_keys import KeyLayout
from consumer.settings import TrainerSettings
from consumer.trainer import Trainer
from consumer.trainer_lease import TrainerLease
from model.model_format import SegmentModel
from tests.consumer.test_faults import small_model

pytestmark = [pytest.mark.redis]


def history_in_redis(client: redis.Redis, keys: KeyLayout) -> set[int]:
    """Versions with a ``v:<n>`` key, found by SCAN (not through the ``versions`` set)."""
    prefix = keys.model_history(0)[:-1]
    return {int(k[len(prefix) :]) for k in client.scan_iter(match=f"{prefix}*", count=1000)}


@pytest.mark.parametrize("how", ["publish_next", "publish_next_with_lease", "publish"])
def test_a_publish_keeps_only_the_newest_history_versions(
    redis_client: redis.Redis, namespace: str, how: str
) -> None:
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys, history_versions=3)
    lease = TrainerLease(redis_client, keys.trainer_lease, seconds=30)
    assert lease.acquire()
    model = small_model()
    for version in range(1, 6):
        if how == "publish":
            store.publish(model.model_copy(update={"model_version": version}))
        elif how == "publish_next":
            assert store.publish_next(model).model_version == version
        else:
            published = store.publish_next(model, lease_key=keys.trainer_lease, token=lease.token)
            assert published.model_version == version
        assert len(store.versions()) == min(version, 3)

    assert store.versions() == [5, 4, 3]
    assert history_in_redis(redis_client, keys) == {3, 4, 5}  # the JSON is gone, not only listed
    assert store.current_version() == 5
    current = store.load_current()
    assert current is not None and current.model_version == 5

    with pytest.raises(ConfigError) as pruned:
        store.rollback(2)
    message = str(pruned.value)
    assert "version 2" in message and "oldest kept version is 3" in message
    assert "trainer.model_history_versions" in message
    assert store.current_version() == 5  # a refused rollback changes nothing

    assert store.rollback(4).model_version == 4
    assert store.current_version() == 4
    current = store.load_current()
    assert current is not None and current.model_version == 4

    # The next publish makes itself current and drops the oldest (not the rolled-back one).
    store.publish(model.model_copy(update={"model_version": 6}))
    assert store.versions() == [6, 5, 4]
    assert history_in_redis(redis_client, keys) == {4, 5, 6}
    assert store.current_version() == 6


def test_without_history_versions_nothing_is_pruned(
    redis_client: redis.Redis, namespace: str
) -> None:
    keys = KeyLayout(namespace)
    unlimited = ModelStore(redis_client, keys)
    model = small_model()
    for version in range(1, 6):
        assert unlimited.publish_next(model).model_version == version
    unlimited.publish(model.model_copy(update={"model_version": 6}))
    assert unlimited.versions() == [6, 5, 4, 3, 2, 1]
    assert history_in_redis(redis_client, keys) == {1, 2, 3, 4, 5, 6}
    assert unlimited.rollback(1).model_version == 1

    # The same history, published to with the limit: the backlog goes in that one publish.
    assert ModelStore(redis_client, keys, history_versions=2).publish_next(model).model_version == 7
    assert unlimited.versions() == [7, 6]
    assert history_in_redis(redis_client, keys) == {6, 7}
    with pytest.raises(ConfigError, match="oldest kept version is 6"):
        unlimited.rollback(1)


def test_a_publish_never_drops_the_version_it_publishes(
    redis_client: redis.Redis, namespace: str
) -> None:
    """An explicit version older than the kept ones (a hand-made publish) stays, as current."""
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys, history_versions=2)
    model = small_model()
    for version in (10, 11, 12):
        store.publish(model.model_copy(update={"model_version": version}))
    assert store.versions() == [12, 11]
    store.publish(model.model_copy(update={"model_version": 3}))
    assert store.versions() == [12, 3]
    assert history_in_redis(redis_client, keys) == {3, 12}
    assert store.current_version() == 3
    with pytest.raises(ConfigError, match="no model version 20"):  # never published: not pruned
        store.rollback(20)


def test_loading_a_listing_leaves_out_versions_pruned_since_it_was_read(
    redis_client: redis.Redis, namespace: str
) -> None:
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys, history_versions=3)
    model = small_model()
    for version in (1, 2, 3):
        store.publish(model.model_copy(update={"model_version": version}))
    listed = store.versions()
    store.publish(model.model_copy(update={"model_version": 4}))  # prunes v1
    assert listed == [3, 2, 1]
    assert [m.model_version for m in store.load_kept(listed)] == [3, 2]
    assert [m.model_version for m in store.load_kept([1, 4, 2])] == [4, 2]
    assert store.versions(newest=2) == [4, 3] and store.version_count() == 3


def test_the_trainer_and_the_model_command_pass_the_setting(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    keys = KeyLayout(namespace)
    trainer = Trainer(redis_client, keys, TrainerSettings(model_history_versions=2))
    model = small_model()
    for version in range(1, 4):
        assert trainer.models.publish_next(model).model_version == version
    assert trainer.models.versions() == [3, 2]

    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    monkeypatch.setenv("STREAMSEG_TRAINER__MODEL_HISTORY_VERSIONS", "2")
    path = tmp_path / "model.json"
    path.write_bytes(model.to_json())
    base = ["--namespace", namespace, "model"]
    assert main([*base, "import", str(path)]) == 0
    assert main([*base, "import", str(path)]) == 0
    assert history_in_redis(redis_client, keys) == {4, 5}
    capsys.readouterr()
    assert main([*base, "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and listed[0].startswith("* v5 ") and listed[1].startswith("  v4 ")
    assert main([*base, "list", "--last", "1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("* v5 ") and listed[1:] == [
        "  ... and 1 older (--last 0 lists all)"
    ]
    with pytest.raises(SystemExit):
        main([*base, "list", "--last", "-1"])
    assert "'-1' must be >= 0" in capsys.readouterr().err
    assert main([*base, "rollback", "3"]) == 2
    err = capsys.readouterr().err
    assert "oldest kept version is 4" in err and "trainer.model_history_versions" in err
    assert main([*base, "rollback", "4"]) == 0
    assert ModelStore(redis_client, keys).current_version() == 4


def test_model_list_is_readable_and_shows_when_a_model_was_imported(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """It printed ``inertia=698.2606954881032``, and an imported model kept its own
    ``created_at`` only, so v2 (imported today) looked older than v1."""
    keys = KeyLayout(namespace)
    trained = small_model()
    ModelStore(redis_client, keys).publish(trained)  # a document from before imports were noted
    old = small_model(seed=1).model_copy(
        update={"created_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}
    )
    path = tmp_path / "old.json"
    path.write_bytes(old.to_json())
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    base = ["--namespace", namespace, "model"]
    before = datetime.now(UTC).replace(microsecond=0)
    assert main([*base, "import", str(path)]) == 0
    capsys.readouterr()

    assert main([*base, "list"]) == 0
    imported, first = capsys.readouterr().out.splitlines()
    assert imported.startswith("* v2 ") and "created 2024-01-02T03:04:05Z" in imported
    when = re.search(r"imported (\S+)", imported)
    assert when is not None, imported
    assert before <= datetime.fromisoformat(when[1]) <= datetime.now(UTC)
    assert first.startswith("  v1 ") and "imported" not in first
    assert trained.metrics.inertia == pytest.approx(1647.745)
    assert "inertia=1,648" in first
    assert f"rows={trained.metrics.n_rows:,}" in first
    assert not re.search(r"\d\.\d{5,}", imported + first)  # no float at full precision

    # The note is in the stored document, which any reader (and an older one) still loads.
    stored = ModelStore(redis_client, keys).load(2)
    assert stored.created_at == old.created_at
    assert stored.centers == old.centers
    assert main([*base, "show", "2"]) == 0
    assert "imported " in capsys.readouterr().out.splitlines()[0]
    # It logged "rolled back to model version 2" for the version already current.
    assert main([*base, "rollback", "v2"]) == 0
    assert capsys.readouterr().out == "model v2 is current already: nothing changed\n"


def test_an_import_names_what_is_wrong_with_the_file_before_asking_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Nothing answers at the Redis URL: a bad file is still named, and the message points at
    the first feature the model reads differently."""
    monkeypatch.setenv("STREAMSEG_REDIS__URL", "redis://127.0.0.1:1/0")
    model = small_model()
    names = list(model.feature_names)
    names[2], names[3] = names[3], names[2]
    path = tmp_path / "swapped.json"
    data = json.loads(model.to_json())
    data["feature_names"] = data["preprocessing"]["feature_names"] = names
    path.write_text(json.dumps(data))
    assert main(["model", "import", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"cannot import {path}" in error
    assert f"feature 3 is {names[2]!r}, this service computes {names[3]!r} there" in error
    path.write_text("not json")
    assert main(["model", "import", str(path)]) == 2
    assert "invalid segment model" in capsys.readouterr().err
    # An endless file is refused after the size cap, not read until memory runs out.
    assert main(["model", "import", "/dev/zero"]) == 2
    assert "bytes, more than the 16,777,216 a model may have" in capsys.readouterr().err
    # A good file reaches Redis, which does not answer: one line, not a traceback.
    path.write_bytes(model.to_json())
    assert main(["model", "import", str(path)]) == 2
    assert "Redis (redis.url) did not answer" in capsys.readouterr().err


def test_an_export_makes_its_directory_and_an_unwritable_path_is_one_line(
    redis_client: redis.Redis,
    namespace: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``model export newdir/m.json`` raised FileNotFoundError with a traceback, exit 1."""
    model = small_model()
    ModelStore(redis_client, KeyLayout(namespace)).publish(model)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    path = tmp_path / "newdir" / "m.json"
    assert main(["--namespace", namespace, "model", "export", str(path)]) == 0
    assert SegmentModel.from_json(path.read_bytes()).centers == model.centers
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main(["--namespace", namespace, "model", "export", str(blocked / "m.json")]) == 2
    error = capsys.readouterr().err
    assert f"streamseg: error: {blocked}" in error
    assert "FileExistsError" not in error


def test_model_show_is_a_table_in_tier_order(
    redis_client: redis.Redis,
    namespace: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It printed each profile's pydantic repr, full-precision floats, in id order."""
    model = small_model()
    ModelStore(redis_client, KeyLayout(namespace)).publish(model)
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "model", "show"]) == 0
    header, columns, *rows = capsys.readouterr().out.splitlines()
    assert header.startswith(f"model v{model.model_version} created ")
    assert columns.split()[:5] == ["id", "tier", "name", "users", "share"]
    assert [int(r.split()[1]) for r in rows] == sorted(model.tiers)
    assert "SegmentProfile" not in "".join(rows) and "mean_" not in "".join(rows)


@pytest.mark.parametrize(
    ("key", "value"),
    [("model_version", "xyz"), ("model_version", "0"), ("model_versions", "v7")],
)
def test_a_hand_edited_version_is_named_not_a_traceback(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    value: str,
) -> None:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    keys = KeyLayout(namespace)
    ModelStore(redis_client, keys).publish(small_model())
    edited = getattr(keys, key)
    if key == "model_versions":
        redis_client.zadd(edited, {value: 99})
    else:
        redis_client.set(edited, value)
    capsys.readouterr()
    assert main(["--namespace", namespace, "model", "list"]) == 2
    error = capsys.readouterr().err
    assert f"{edited} holds '{value}', not a model version" in error
    assert "Traceback" not in error


def test_an_import_keeps_the_ids_of_the_segments_it_matches(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """An imported model kept its own ids, which here meant other segments: records and
    `status` sizes named the wrong segments, and no re-score began because every id held
    still existed."""
    keys = KeyLayout(namespace)
    current = small_model()
    ModelStore(redis_client, keys).publish(current)
    k = len(current.ids)
    data = current.model_dump(mode="json")
    far = [c + 100.0 for c in data["centers"][0]]  # a segment this namespace does not have
    data.update(
        centers=[far, *data["centers"][1:]],
        ids=[40 + i for i in range(k)],
        next_id=40 + k,
    )
    path = tmp_path / "elsewhere.json"
    path.write_bytes(SegmentModel.model_validate(data).to_json())
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "model", "import", str(path)]) == 0
    out = capsys.readouterr().out
    imported = ModelStore(redis_client, keys).load(2)
    assert imported.ids == [current.next_id, *current.ids[1:]]
    assert imported.next_id == current.next_id + 1
    assert f"{k - 1} of {k} matched a segment of v1" in out
    assert f"v1's segments [{current.ids[0]}] have no match" in out


def test_an_import_after_a_rollback_takes_no_id_a_newer_version_used(
    redis_url: str,
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A rollback brings back an older next_id; new ids start past the newest version's."""
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    v1 = small_model()
    store.publish(v1)
    store.publish(v1.model_copy(update={"model_version": 2, "next_id": v1.next_id + 5}))
    store.rollback(1)
    data = v1.model_dump(mode="json")
    data["centers"] = [[c + 100.0 for c in data["centers"][0]], *data["centers"][1:]]
    path = tmp_path / "elsewhere.json"
    path.write_bytes(SegmentModel.model_validate(data).to_json())
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    assert main(["--namespace", namespace, "model", "import", str(path)]) == 0
    imported = store.load(3)
    assert imported.ids[0] == v1.next_id + 5  # not v1.next_id, which v2 may have used
    assert imported.next_id == v1.next_id + 6
