"""parity.table: one row per config, the worst path's figures, the newest report of a config."""
import json
import os

from parity.table import table


def _report(config, matched, ious, ap_paths, mask=True):
    ap = {"bbox": 50.0, "segm": 55.0} if mask else {"bbox": 50.0}
    paths = {}
    for (name, m), iou, ap_path in zip(matched.items(), ious, ap_paths):
        paths[name] = {"d2_detections": 100, "our_detections": 99 if m < 1 else 100,
                       "matched": m, "mask_iou": iou if mask else None,
                       "mask_iou_min": iou - 0.1 if mask else None, "ap": ap_path}
    return {"config": config, "images": [{}, {}], "d2": {"detections": 100, "ap": ap},
            "paths": paths}


def test_rows_show_the_worst_path_and_the_newest_report(tmp_path):
    older = _report("Misc/x.yaml", {"eval": 0.5}, [0.5], [{"bbox": 1.0, "segm": 1.0}])
    newer = _report("Misc/x.yaml", {"eval": 1.0, "predict": 0.99}, [0.999, 0.995],
                    [{"bbox": 50.0, "segm": 55.0}, {"bbox": 50.25, "segm": 54.5}])
    faster = _report("COCO-Detection/f.yaml", {"eval": 1.0}, [None],
                     [{"bbox": 50.0}], mask=False)
    files = []
    for i, rep in enumerate((older, newer, faster)):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(rep))
        os.utime(path, (1000 + i, 1000 + i))
        files.append(str(path))
    lines = table(files).splitlines()
    assert len(lines) == 4  # header, separator, one row per config
    assert lines[2] == "| COCO-Detection/f | 2 | eval | 100 / 100 | 100.00 % | - | 50.00 | 0.00 |"
    assert lines[3] == ("| Misc/x | 2 | eval, predict | 100 / 99 | 99.00 % | 0.9950 / 0.895 | "
                        "50.00 / 55.00 | 0.25 / 0.50 |")
