"""Fetching GlaS with pooch, for users with internet. Nothing else in the project needs a download."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import OEEMError

GLAS_URL = ("https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/download/"
            "warwick_qu_dataset_released_2016_07_08.zip")
GLAS_HELP = (f"download the GlaS archive yourself from {GLAS_URL} (or the challenge page, 'Warwick QU dataset'), "
             "unzip it, and give its folder (the one with train_1.bmp and train_1_anno.bmp) to `oeem init`")


def fetch_glas(dest: str | Path | None = None, sha256: str | None = None) -> Path:
    """Download and unpack GlaS into ``dest`` (default: pooch's user cache); returns the folder with the images.

    The archive is checked against ``sha256`` when given; either way the unpacked folder is checked to hold the
    165 images with their masks, so a truncated or wrong download is caught.
    """
    import pooch

    dest = Path(dest) if dest else Path(pooch.os_cache("oeem-napari"))
    try:
        files = pooch.retrieve(GLAS_URL, known_hash=f"sha256:{sha256}" if sha256 else None, path=dest,
                               processor=pooch.Unzip(extract_dir="glas"), progressbar=True)
    except ValueError as exc:  # checksum mismatch
        raise OEEMError(f"the GlaS download does not match its checksum ({exc}); delete {dest} and retry") from None
    except Exception as exc:  # noqa: BLE001 - no network, proxy, HTTP errors
        raise OEEMError(f"cannot download GlaS ({type(exc).__name__}); {GLAS_HELP}") from None
    images = [f for f in files if f.endswith(".bmp") and not f.endswith("_anno.bmp")]
    if len(images) < 165:
        raise OEEMError(f"the GlaS archive in {dest} holds {len(images)} images, expected 165; delete it and retry")
    return Path(images[0]).parent
