"""`streamseg model rename`: an operator's segment name, published at once and kept by the
trainer's later versions, against a real Redis."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from consumer import segment_names
from consumer.cli import main
from consumer.exceptions import ConfigError
from consumer.model_store import ModelStore, imported_at, renamed_at
from consumer.redis_keys import KeyLayout
from consumer.segment_names import checked_name, read_chosen_names, rename_segment
from consumer.settings import TrainerSettings
from consumer.trainer import Trainer
from model.features import FEATURE_NAMES
from model.model_format import SegmentModel
from tests.consumer.pipeline_support import push_training_rows
from tests.consumer.test_faults import small_model

pytestmark = [pytest.mark.redis]

USERS = [f"u{i}" for i in range(300)]


def clustered_rows(rng: np.random.Generator, groups: int) -> np.ndarray:
    """One row per user of `USERS` in ``groups`` well-apart groups (each a scale of the
    others), so that updates and refits keep matching the same segments."""
    scale = np.exp(3.0 * (np.arange(len(USERS)) % groups))[:, None]
    return scale * rng.lognormal(0.0, 0.2, (len(USERS), len(FEATURE_NAMES)))


def bootstrapped_trainer(
    client: redis.Redis, keys: KeyLayout, rng: np.random.Generator, groups: int
) -> tuple[Trainer, SegmentModel]:
    """A trainer of ``groups`` segments that published its bootstrap on `clustered_rows`
    (an update needs 300 more rows)."""
    trainer = Trainer(
        client, keys, TrainerSettings(n_clusters=groups, bootstrap_rows=300, update_rows=300)
    )
    trainer.resume()
    push_training_rows(client, keys, clustered_rows(rng, groups), USERS)
    first = trainer.step()
    assert first is not None
    return trainer, first


def names_by_id(model: SegmentModel) -> dict[int, str]:
    return dict(zip(model.ids, model.names, strict=True))


@pytest.fixture
def model_command(redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("STREAMSEG_REDIS__URL", redis_url)
    return ["--namespace", namespace, "model"]


def test_a_chosen_name_is_published_at_once_and_kept_by_every_later_version(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(3)
    trainer, first = bootstrapped_trainer(redis_client, keys, rng, groups=3)
    segment = first.ids[1]

    assert main([*model_command, "rename", str(segment), "VIP customers"]) == 0
    out = capsys.readouterr().out
    assert f"published model v{first.model_version + 1}" in out
    assert f"segment {segment}: {names_by_id(first)[segment]!r} -> 'VIP customers'" in out
    store = ModelStore(redis_client, keys)
    renamed = store.load_current()
    assert renamed is not None and renamed.model_version == first.model_version + 1
    assert names_by_id(renamed)[segment] == "VIP customers"
    # Only the name changed: same centres, ids, tiers and profiles.
    assert renamed.centers == first.centers and renamed.ids == first.ids
    assert renamed.tiers == first.tiers and renamed.profiles == first.profiles
    assert read_chosen_names(redis_client, keys) == {segment: "VIP customers"}

    # The trainer's next update (from the renamed version) names the segment so again.
    push_training_rows(redis_client, keys, clustered_rows(rng, 3), USERS)
    trainer_log = logging.getLogger("consumer.trainer")
    trainer_log.addHandler(caplog.handler)  # main() above reconfigured the root logger
    try:
        with caplog.at_level(logging.INFO, logger="consumer.trainer"):
            update = trainer.step()
    finally:
        trainer_log.removeHandler(caplog.handler)
    assert update is not None and update.model_version == renamed.model_version + 1
    assert segment in update.ids and names_by_id(update)[segment] == "VIP customers"
    # Routine, not a warning: the trainer's own version with an operator's names.
    assert "with names chosen by model rename" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    assert main([*model_command, "show"]) == 0
    table = capsys.readouterr().out
    assert "VIP customers *" in table and "chosen with `streamseg model rename`" in table
    assert main([*model_command, "show", "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["model_version"] == update.model_version and shown["renamed_at"] is None
    by_id = {s["segment_id"]: s for s in shown["segments"]}
    assert by_id[segment]["segment"] == "VIP customers" and by_id[segment]["chosen"]
    assert [s["chosen"] for s in shown["segments"]].count(True) == 1
    assert [s["tier"] for s in shown["segments"]] == sorted(update.tiers)
    profile = update.profiles[update.ids.index(segment)]
    assert by_id[segment]["mean_net_revenue"] == profile.mean_net_revenue  # full precision
    assert main([*model_command, "list", "--last", "2"]) == 0
    newest, older, _ = capsys.readouterr().out.splitlines()  # and "... 1 older"
    assert "renamed " not in newest and "renamed " in older  # the trainer's, then the rename's

    # An import whose segments match the current ones keeps the chosen name too.
    path = tmp_path / "model.json"
    path.write_bytes(update.model_copy(update={"names": ["a", "b", "c"]}).to_json())
    assert main([*model_command, "import", str(path)]) == 0
    capsys.readouterr()
    imported = store.load_current()
    assert imported is not None and names_by_id(imported)[segment] == "VIP customers"

    # --rule gives the rules' name back, and the trainer no longer keeps the chosen one.
    assert main([*model_command, "rename", str(segment), "--rule"]) == 0
    capsys.readouterr()
    back = store.load_current()
    assert back is not None and names_by_id(back)[segment] != "VIP customers"
    # A rename of the imported version is still the import's fit: its age counts from it.
    assert imported_at(back) == imported_at(imported) is not None
    assert renamed_at(back) is not None
    assert read_chosen_names(redis_client, keys) == {}
    push_training_rows(redis_client, keys, clustered_rows(rng, 3), USERS)
    later = trainer.step()
    assert later is not None and "VIP customers" not in later.names


def test_choosing_a_name_another_segment_has_moves_that_one_to_a_suffix(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = small_model()
    ModelStore(redis_client, KeyLayout(namespace)).publish(model)
    before = names_by_id(model)
    holder = next(i for i, name in before.items() if name == "new customers")
    chooser = next(i for i in model.ids if i != holder)
    assert main([*model_command, "rename", str(chooser), "new customers"]) == 0
    out = capsys.readouterr().out
    after = ModelStore(redis_client, KeyLayout(namespace)).load_current()
    assert after is not None
    now = names_by_id(after)
    assert now[chooser] == "new customers" and now[holder].startswith("new customers (")
    assert len(set(now.values())) == len(now)
    # The summary names both changes, the chosen one and the one it displaced.
    assert f"segment {chooser}: {before[chooser]!r} -> 'new customers'" in out
    assert f"segment {holder}: 'new customers' -> {now[holder]!r}" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["99", "x"], "model v2 has no segment 99: its segments are [0, 1, 2, 3]"),
        (["2", "VIP"], "segment 1 is already called 'VIP' (a name chosen with model rename)"),
        (["2", " VIP"], "segment name ' VIP' starts or ends with a space"),
        (["2", "a\x1b[31mred"], "holds a control character or a line break (U+001B)"),
        (["2", "x" * 201], "a segment name has at most 200 characters, got 201"),
        (["2", ""], "a segment name cannot be empty"),
        (["2", "2024"], "segment name '2024' is digits only"),
    ],
)
def test_a_rename_that_cannot_be_done_says_why_and_publishes_nothing(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    store = ModelStore(redis_client, KeyLayout(namespace))
    store.publish(small_model())
    assert main([*model_command, "rename", "1", "VIP"]) == 0
    assert main([*model_command, "rename", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert store.current_version() == 2


def test_choosing_the_name_a_segment_has_publishes_the_choice_and_a_repeat_nothing(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The choice is published with a version like any rename, so that a trainer's publish
    in between is fenced (a hash written alone raced with it)."""
    model = small_model()
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    store.publish(model)
    segment, name = model.ids[0], model.names[0]
    assert main([*model_command, "rename", str(segment), name]) == 0
    out = capsys.readouterr().out
    assert "with the same names" in out and "(chosen, kept through refits)" in out
    assert store.current_version() == model.model_version + 1
    assert read_chosen_names(redis_client, keys) == {segment: name}
    assert main([*model_command, "rename", str(segment), name]) == 0
    assert "(a chosen name) in v2 already: no version published" in capsys.readouterr().out
    assert store.current_version() == model.model_version + 1
    assert main([*model_command, "rename", str(segment), "--rule"]) == 0
    assert read_chosen_names(redis_client, keys) == {}
    assert store.current_version() == model.model_version + 2


def test_a_gone_segments_name_is_given_to_a_new_rename_and_can_be_released(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Segment 9 was called "VIP" and is gone: renaming segment 2 "VIP" left both entries,
    and which one won depended on the hash's order."""
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    store.publish(small_model())
    redis_client.hset(keys.model_names, mapping={"9": "VIP", "8": "gold"})
    assert main([*model_command, "rename", "2", "VIP"]) == 0
    assert read_chosen_names(redis_client, keys) == {2: "VIP", 8: "gold"}
    capsys.readouterr()
    assert main([*model_command, "rename", "8", "--rule"]) == 0
    assert "segment 8 is in no current model: its chosen name is released" in (
        capsys.readouterr().out
    )
    assert read_chosen_names(redis_client, keys) == {2: "VIP"}
    # Rolled back, the version before the rename is current with its own names again.
    assert main([*model_command, "rollback", "1"]) == 0
    current = store.load_current()
    assert current is not None and "VIP" not in current.names
    capsys.readouterr()
    assert main([*model_command, "list", "--last", "1"]) == 0  # v3 alone: say which is current
    assert capsys.readouterr().out.splitlines()[-1].startswith("* v1 is current (a rollback")


def test_a_rename_needs_a_model_and_a_name_or_rule(
    redis_client: redis.Redis,
    namespace: str,
    model_command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    redis_client.hset(KeyLayout(namespace).counters, "events", 1)  # a namespace, no model yet
    assert main([*model_command, "rename", "1", "VIP"]) == 2
    assert "no model published yet" in capsys.readouterr().err
    assert main([*model_command, "show", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no model published yet" in err  # nothing a JSON reader chokes on
    with pytest.raises(SystemExit):
        main([*model_command, "rename", "1"])
    assert "one of the arguments NAME --rule is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*model_command, "rename", "1", "VIP", "--rule"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_rename_during_a_trainer_fit_is_not_undone_by_its_publish(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyLayout(namespace)
    rng = np.random.default_rng(5)
    trainer, first = bootstrapped_trainer(redis_client, keys, rng, groups=2)
    assert trainer.segmenter is not None
    store = ModelStore(redis_client, keys)
    segment = first.ids[0]
    predict = trainer.segmenter.predict  # every kind of update calls it before its publish

    def predict_while_a_rename_lands(Z: np.ndarray) -> object:
        if store.current_version() == first.model_version:
            rename_segment(store, segment, "VIP")
        return predict(Z)

    monkeypatch.setattr(trainer.segmenter, "predict", predict_while_a_rename_lands)
    push_training_rows(redis_client, keys, clustered_rows(rng, 2), USERS)
    assert trainer.step() is None  # refused: the rename stays current
    current = store.load_current()
    assert current is not None and names_by_id(current)[segment] == "VIP"
    push_training_rows(redis_client, keys, clustered_rows(rng, 2), USERS)
    update = trainer.step()
    assert update is not None and names_by_id(update)[segment] == "VIP"


def test_a_hand_edited_names_hash_is_read_without_its_bad_entries(
    redis_client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = KeyLayout(namespace)
    redis_client.hset(
        keys.model_names,
        mapping={
            "3": "VIP",
            "x": "not an id",
            "4": "",
            "5": "bell\x07",
            "6": b"\xff\xfe",
            "07": "gold",
        },
    )
    with caplog.at_level(logging.WARNING):
        assert read_chosen_names(redis_client, keys) == {3: "VIP"}
    assert caplog.text.count("left out") == 5
    assert "field '6': left out: 'utf-8' codec can't decode" in caplog.text
    assert "field '07': left out: not written as a segment id (that is 7)" in caplog.text


@pytest.mark.parametrize(
    "name",
    ["VIP", "Kunden mit Herz ♥", "大口客户", "👩‍💻 developers", "soft\u00adhyphen", "a" * 200],
)
def test_names_of_any_script_and_up_to_200_characters_are_taken(name: str) -> None:
    assert checked_name(name) == name


def test_a_name_with_a_lone_surrogate_is_refused() -> None:
    # What Python makes of argv bytes that are not UTF-8.
    with pytest.raises(ConfigError, match="not valid Unicode"):
        checked_name("caf\udce9")


@pytest.mark.parametrize("text", ["two\u2028lines", "para\u2029graph", "tab\there", "nul\x00"])
def test_a_name_that_breaks_a_line_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="a control character or a line break"):
        checked_name(text)


def test_a_publish_between_a_renames_read_and_its_publish_is_renamed_not_undone(
    redis_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = KeyLayout(namespace)
    store = ModelStore(redis_client, keys)
    store.publish(small_model())
    newer = small_model(seed=1)  # what a trainer publishes meanwhile: other centres
    read = segment_names.read_chosen_names

    def read_while_a_trainer_publishes(client: redis.Redis, layout: KeyLayout) -> object:
        if store.current_version() == 1:
            store.publish_next(newer)
        return read(client, layout)

    monkeypatch.setattr(segment_names, "read_chosen_names", read_while_a_trainer_publishes)
    done = rename_segment(store, 1, "VIP")
    assert done.before is not None and done.before.model_version == 2  # read again
    assert done.after is not None and done.after.model_version == 3
    assert done.after.centers == newer.centers  # the trainer's version, renamed
    assert names_by_id(done.after)[1] == "VIP"


def test_giving_a_name_back_gives_the_segment_it_displaced_its_plain_name_again(
    redis_client: redis.Redis, namespace: str
) -> None:
    """A walkthrough named segment 15 "inactive", so 11 became "inactive (2)"; `--rule` on
    15 left 11 with its suffix and no "inactive" in the model."""
    keys = KeyLayout(namespace)
    _, first = bootstrapped_trainer(redis_client, keys, np.random.default_rng(3), groups=3)
    store = ModelStore(redis_client, keys)
    # The holder's rule gives a name no other segment's rule gives (when two share a rule's
    # name, each keeps its suffix by the documented stability rule).
    holder, taken = next((i, n) for i, n in names_by_id(first).items() if "(" not in n)
    assert not any(n.startswith(f"{taken} (") for n in first.names)
    chooser = next(i for i in first.ids if i != holder)
    displaced = rename_segment(store, chooser, taken).after
    assert displaced is not None and names_by_id(displaced)[holder] == f"{taken} (2)"
    back = rename_segment(store, chooser, None).after
    assert back is not None and names_by_id(back) == names_by_id(first)
