"""`python -m client --local EXPORT_DIR --explain`: a Grad-CAM overlay per image, from the export's checkpoint."""

from __future__ import annotations

import json
import shutil

from PIL import Image


def test_explain_writes_one_overlay_per_image_next_to_the_table(digits_export, digit_images, tmp_path, run_client):
    images = [*sorted((digit_images / "7").iterdir()), *sorted((digit_images / "3").iterdir())[:1]]
    twin = tmp_path / "again" / images[0].name  # the same file name from another folder
    twin.parent.mkdir()
    shutil.copy(images[0], twin)
    out = tmp_path / "explained"
    status, stdout, err = run_client(
        *images, twin, "--local", digits_export, "--explain", "--explain-dir", out, "--json"
    )
    assert status == 0, err
    results = json.loads(stdout)["results"]
    paths = [r["explanation"] for r in results]
    assert len(set(paths)) == 4 and paths[3].endswith(f"{images[0].stem}-2.gradcam.png")
    for path in paths:
        with Image.open(path) as overlay:
            assert overlay.format == "PNG" and overlay.width > 2 * overlay.height  # the image and 3 class maps

    status, table, _ = run_client(images[0], "--local", digits_export, "--explain", "--explain-dir", out, "--top-k", 2)
    assert status == 0 and f"  Grad-CAM: {out / images[0].stem}.gradcam.png" in table


def test_explain_needs_local_and_the_unchanged_source_checkpoint(digits_export, digit_images, tmp_path, run_client):
    image = next((digit_images / "1").iterdir())
    status, _, err = run_client(image, "--explain")
    assert status == 2 and "--explain needs --local" in err

    copy = tmp_path / "export"
    shutil.copytree(digits_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    tampered = tmp_path / "best.pt"
    tampered.write_bytes(open(manifest["source_checkpoint"]["path"], "rb").read() + b"\0")
    manifest["source_checkpoint"]["path"] = str(tampered)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    status, _, err = run_client(image, "--local", copy, "--explain", "--explain-dir", tmp_path / "x")
    assert status == 4 and f"{tampered} changed since" in err

    tampered.unlink()
    status, _, err = run_client(image, "--local", copy, "--explain", "--explain-dir", tmp_path / "x")
    assert status == 4 and "is gone" in err
