"""The AP table printed at the end of training."""
from tfmrcnn.evaluation.testing import print_ap_table


def test_ap_table_has_one_row_per_task_and_skips_other_entries(capsys):
    print_ap_table({"bbox": {"AP": 41.234, "AP50": 60.0, "AP75": 44.5, "APs": 20.0,
                             "APm": 45.0, "APl": 55.5, "AP-person": 50.0},
                    "segm": {"AP": 37.0},  # missing columns print as nan
                    "timing": {"inference_s": 1.0}})
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["| task | AP | AP50 | AP75 | APs | APm | APl |",
                     "|---|---|---|---|---|---|---|",
                     "| bbox | 41.234 | 60.000 | 44.500 | 20.000 | 45.000 | 55.500 |",
                     "| segm | 37.000 | nan | nan | nan | nan | nan |"]
