"""benchmarks/small_images.py's table logic on fabricated timings (nothing is run or timed); that
it imports without TensorFlow is tested with the other PyTorch workers (test_sections.py)."""
import pytest

from benchmarks import small_images


def test_image_sizes_are_seeded_and_within_the_demo_range():
    sizes = small_images.image_sizes(50)
    assert sizes == small_images.image_sizes(50) and len(set(sizes)) > 40
    lo, hi = small_images.SIZE_RANGE
    assert all(lo <= s <= hi for hw in sizes for s in hw)


def test_side_row_takes_the_first_call_of_the_cold_pass_and_the_rest_of_the_warm_one():
    cold = [9.0, 1.0, 1.2, 0.8]    # the first batch traced
    warm = [1.0, 0.9, 1.1, 1.3]
    row = small_images.side_row("ours", 1, 4, cold, warm, detections=12)
    assert row["first_call_s"] == 9.0
    assert row["per_image_s"] == pytest.approx(1.05)          # median of the warm pass
    assert row["images_per_s"] == pytest.approx(4 / 4.3)
    assert row["first_pass_images_per_s"] == pytest.approx(4 / 12.0)
    assert row["detections"] == 12
    # batch 4: per-image time is the batch's over 4; one pass stands for both
    row = small_images.side_row("d2", 4, 8, [2.0, 4.0])
    assert row["per_image_s"] == pytest.approx(0.75)
    assert row["images_per_s"] == pytest.approx(8 / 6.0) == row["first_pass_images_per_s"]


def test_passes_cold_and_warm_for_the_first_batch_size_only():
    assert [small_images.passes_of(b, (1, 4)) for b in (1, 4)] == [2, 1]


def test_summary_divides_our_rate_by_detectron2s_for_each_batch_both_measured():
    rows = [{"side": "ours", "batch": 1, "images_per_s": 3.0},
            {"side": "d2", "batch": 1, "images_per_s": 2.0},
            {"side": "ours", "batch": 4, "images_per_s": 5.0},
            {"side": "d2", "batch": 4, "stage": "FAILED", "note": "..."},
            {"side": "ours", "batch": 8, "images_per_s": 6.0}]
    (summary,) = small_images.summary_rows(rows)
    assert summary["batch"] == 1 and summary["ours_over_d2"] == pytest.approx(1.5)
    assert (summary["ours_images_per_s"], summary["d2_images_per_s"]) == (3.0, 2.0)
