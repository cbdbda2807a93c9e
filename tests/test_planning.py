"""Incremental indexing rules on plain records (no model, no database)."""

from imgsearch.planning import find_touched, make_plan, match_content
from imgsearch.records import FileEntry, ImageState, ScanProblem, Skip


def _state(i, path, size=10, mtime=1, digest=None):
    return ImageState(i, path, size, mtime, digest or f"h{i}")


def test_unchanged_new_changed_vanished_are_sorted_apart():
    known = {
        "/p/a.jpg": _state(1, "/p/a.jpg"),
        "/p/b.jpg": _state(2, "/p/b.jpg"),
        "/p/gone.jpg": _state(3, "/p/gone.jpg"),
    }
    scanned = [FileEntry("/p/a.jpg", 10, 1), FileEntry("/p/b.jpg", 10, 2), FileEntry("/p/new.jpg", 5, 1)]
    plan = make_plan(scanned, known, {})
    assert plan.unchanged == 1
    assert [e.path for e in plan.new] == ["/p/new.jpg"]
    assert list(plan.changed) == ["/p/b.jpg"] and plan.changed["/p/b.jpg"][0].id == 2
    assert list(plan.vanished) == ["/p/gone.jpg"]
    assert [e.path for e in plan.to_embed] == ["/p/new.jpg", "/p/b.jpg"]


def test_skipped_files_are_retried_only_when_modified():
    skipped = {"/p/bad.jpg": Skip("/p/bad.jpg", 3, 7, "corrupt"), "/p/fixed.jpg": Skip("/p/fixed.jpg", 3, 7, "x")}
    scanned = [FileEntry("/p/bad.jpg", 3, 7), FileEntry("/p/fixed.jpg", 900, 8), ScanProblem("/p/l.jpg", "unreadable")]
    plan = make_plan(scanned, {}, skipped)
    assert plan.still_skipped == 1
    assert [e.path for e in plan.new] == ["/p/fixed.jpg"]
    assert plan.problems == [Skip("/p/l.jpg", None, None, "unreadable")]


def test_moves_pair_new_files_with_vanished_rows_by_content():
    known = {"/p/old.jpg": _state(1, "/p/old.jpg", digest="same"), "/p/x.jpg": _state(2, "/p/x.jpg", digest="gone")}
    scanned = [FileEntry("/p/renamed.jpg", 10, 9), FileEntry("/p/other.jpg", 4, 4)]
    plan = make_plan(scanned, known, {})
    match_content(
        plan,
        {"/p/renamed.jpg": "same", "/p/other.jpg": "different"},
        {"same": [known["/p/old.jpg"]]},
        exists=lambda path: False,
    )
    assert [(m.id, m.path, m.mtime_ns) for m in plan.moved] == [(1, "/p/renamed.jpg", 9)]
    assert [e.path for e in plan.new] == ["/p/other.jpg"]
    assert list(plan.vanished) == ["/p/x.jpg"]


def test_one_vanished_row_moves_to_one_of_two_copies_and_the_other_reuses_its_vector():
    known = {"/p/old.jpg": _state(1, "/p/old.jpg", digest="same")}
    plan = make_plan([FileEntry("/p/c1.jpg", 10, 1), FileEntry("/p/c2.jpg", 10, 1)], known, {})
    match_content(plan, {"/p/c1.jpg": "same", "/p/c2.jpg": "same"}, {"same": [known["/p/old.jpg"]]}, lambda p: False)
    assert len(plan.moved) == 1 and not plan.new and not plan.vanished
    assert [(e.path, s.id) for e, s in plan.copies] == [("/p/c2.jpg", 1)]


def test_a_renamed_folder_is_a_move_collection_wide_and_a_copy_of_a_present_file_reuses_its_vector():
    elsewhere = {
        "gone": [_state(7, "/old_root/a.jpg", digest="gone")],
        "kept": [_state(8, "/other/b.jpg", digest="kept")],
    }
    scanned = [
        FileEntry("/new_root/a.jpg", 10, 1),
        FileEntry("/new_root/b.jpg", 10, 1),
        FileEntry("/new_root/c.jpg", 3, 1),
    ]
    plan = make_plan(scanned, {}, {})
    on_disk = {"/other/b.jpg"}
    match_content(plan, {"/new_root/a.jpg": "gone", "/new_root/b.jpg": "kept"}, elsewhere, on_disk.__contains__)
    assert [(m.id, m.path) for m in plan.moved] == [(7, "/new_root/a.jpg")]
    assert [(e.path, s.id) for e, s in plan.copies] == [("/new_root/b.jpg", 8)]
    assert [e.path for e in plan.new] == ["/new_root/c.jpg"]


def test_rows_under_an_unlistable_folder_are_kept_not_deleted():
    known = {"/p/locked/a.jpg": _state(1, "/p/locked/a.jpg"), "/p/lockedness/b.jpg": _state(2, "/p/lockedness/b.jpg")}
    skipped = {
        "/p/locked/bad.jpg": Skip("/p/locked/bad.jpg", 1, 1, "corrupt"),
        "/p/gone.jpg": Skip("/p/gone.jpg", 1, 1, "x"),
    }
    plan = make_plan([ScanProblem("/p/locked", "unreadable folder: Permission denied", is_folder=True)], known, skipped)
    assert list(plan.vanished) == ["/p/lockedness/b.jpg"]  # a sibling sharing the name prefix is really gone
    assert plan.gone_skips == ["/p/gone.jpg"]
    assert [p.path for p in plan.problems] == ["/p/locked"]


def test_an_unchanged_scan_problem_is_not_reported_again():
    skipped = {"/p/link.jpg": Skip("/p/link.jpg", None, None, "unreadable: No such file or directory")}
    plan = make_plan([ScanProblem("/p/link.jpg", "unreadable: No such file or directory")], {}, skipped)
    assert plan.still_skipped == 1 and plan.problems == [] and plan.gone_skips == []


def test_touched_files_with_the_same_content_are_not_re_embedded():
    known = {"/p/a.jpg": _state(1, "/p/a.jpg", digest="same"), "/p/b.jpg": _state(2, "/p/b.jpg", digest="old")}
    plan = make_plan([FileEntry("/p/a.jpg", 10, 99), FileEntry("/p/b.jpg", 10, 99)], known, {})
    find_touched(plan, {"/p/a.jpg": "same", "/p/b.jpg": "new"}.get)
    assert [(m.id, m.mtime_ns) for m in plan.touched] == [(1, 99)]
    assert list(plan.changed) == ["/p/b.jpg"]
